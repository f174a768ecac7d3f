"""HTTP client for a TorchServe instance: predict, describe, ready, metrics; tokens, timeouts, retries, typed errors.

    with Client(home=".aiaas") as client:          # URLs from HOME/server.json, keys from its key_file.json
        client.predict("y2x", {"instances": [[6.0], [7.0]]})   # → {"predictions": [12.0, 14.0], ...}

Errors form one small hierarchy, each carrying ``status``, ``type`` (TorchServe's error "type"), ``message`` and
``response``::

    ClientError
    ├── ConnectionFailed            refused, reset, timed out
    └── StatusError                 any other answer >= 400 (once HTTPStatusError, which shadowed httpx's)
        ├── BadRequest              400, a problem with the request itself
        ├── TokenError              400 with type InvalidKeyException: bad, missing or expired token
        ├── NotFound                404
        └── ServerError             5xx
            ├── WorkerDied          500/507 "Worker died.": the worker crashed under the request; retried
            │   └── RequestTimedOut "Worker died." after at least the model's responseTimeout; never retried
            └── ServiceUnavailable  503

TorchServe answers 400 both for a bad body and for a bad token; only the body's "type" tells them apart.

Retries (``retries``, default 2, with exponential ``backoff``): WorkerDied, 503 and broken connections. Never a
4xx (a bad request fails the same way again; an expired token is renewed once instead) and never a
RequestTimedOut: TorchServe answers "Worker died." both to a crash and to a request that outlived the model's
responseTimeout (and kills that worker), so a retry of a hanging request would kill a worker per attempt. An
attempt that lasted at least the model's responseTimeout is taken for a timeout (as is any request that shared a
batch with the one that hung: TorchServe fails them together). The client reads that timeout
from the management API's description of the model (once per model and version); without a management URL or
token it assumes ``response_timeout`` (default 30 s, what `aiaas package` sets by default).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from aiaas_torch.deprecation import renamed_keywords, warn_renamed
from aiaas_torch.handlers.aiaas_contract import some_of
from aiaas_torch.serving import home as _home, tokens as _tokens
from aiaas_torch.serving.errors import TorchServeError
from aiaas_torch.serving.httpclient import REQUEST_S, http_client
from aiaas_torch.serving.management import model_names

__all__ = [
    "Client",
    "ClientError",
    "ConnectionFailed",
    "StatusError",
    "BadRequest",
    "TokenError",
    "NotFound",
    "ServerError",
    "WorkerDied",
    "RequestTimedOut",
    "ServiceUnavailable",
    "classify",
]


class ClientError(Exception):
    """Base of every client error; carries the HTTP status, TorchServe's error type, a message and the response."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,  # noqa: A002 - TorchServe's field name
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.response = response

    def __str__(self) -> str:
        parts = [str(self.status)] if self.status is not None else []
        if self.type:
            parts.append(self.type)
        head = " ".join(parts)
        where = ""
        if self.response is not None:
            where = f" ({self.response.request.method} {self.response.request.url})"
        return f"{head}: {self.message}{where}" if head else f"{self.message}{where}"


class ConnectionFailed(ClientError):
    """The server could not be reached or did not answer in time (refused, reset, timeout)."""


class StatusError(ClientError):
    """The server answered with a status >= 400 (not httpx.HTTPStatusError: our errors never wrap httpx's)."""


def __getattr__(name: str) -> Any:
    """Return the old spelling HTTPStatusError as StatusError, warning (RenamedWarning); other names do not exist."""
    if name == "HTTPStatusError":
        warn_renamed("aiaas_torch.client.HTTPStatusError", "aiaas_torch.client.StatusError")
        return StatusError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BadRequest(StatusError):
    """400 about the request itself (not the token)."""


class TokenError(StatusError):
    """400 InvalidKeyException: the token is wrong, missing or expired."""


class NotFound(StatusError):
    """404: no such model, version or endpoint."""


class ServerError(StatusError):
    """5xx: the server failed."""


class WorkerDied(ServerError):
    """5xx "Worker died.": the worker serving the request's batch crashed (or, see RequestTimedOut, was timed out)."""


class RequestTimedOut(WorkerDied):
    """"Worker died." after at least the model's responseTimeout: TorchServe timed the request out and killed its worker."""


class ServiceUnavailable(ServerError):
    """503: no worker can take the request now (queue full, model not loaded yet)."""


def classify(response: httpx.Response) -> StatusError:
    """Return the typed error for an answer with status >= 400 (built from TorchServe's JSON error body)."""
    status = response.status_code
    err_type = None
    message = response.reason_phrase or ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err_type = body.get("type") if isinstance(body.get("type"), str) else None
        if isinstance(body.get("message"), str):
            message = body["message"]
        elif isinstance(body.get("error"), dict) and isinstance(body["error"].get("message"), str):  # OpenAI's shape
            message = body["error"]["message"]
    if status == 413 and not isinstance(body, dict):
        # TorchServe's HTTP layer refuses it before any handler runs, with an empty body: say which limit.
        message = "request body too large: over the server's max_request_size (TorchServe's default is 6553500 bytes)"
    if not message:
        message = response.text.strip()[:500] or f"HTTP {status}"
    if status == 400:
        cls: type[StatusError] = TokenError if err_type == "InvalidKeyException" else BadRequest
        if cls is TokenError:  # TorchServe's own words ("Token Authorization failed. Token either incorrect, ...")
            message = f"{_tokens.TOKEN_HINT} (TorchServe: {message})"
    elif status == 404:
        cls = NotFound
    elif status >= 500 and message.strip().startswith("Worker died"):  # TorchServe 0.12: 500 on timeout, 507 on a crash
        cls = WorkerDied
    elif status == 503:
        cls = ServiceUnavailable
    elif status >= 500:
        cls = ServerError
    else:
        cls = StatusError
    return cls(message, status=status, type=err_type, response=response)


# Transport failures worth another try: the request never reached a handler or the connection broke.
# A read timeout is not retried: the handler may still be working, and retrying multiplies the wait.
_RETRY_TRANSPORT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.WriteError,
                    httpx.RemoteProtocolError, httpx.PoolTimeout)  # fmt: skip
_RETRY_STATUS = (WorkerDied, ServiceUnavailable)
FALLBACK_RESPONSE_TIMEOUT_S = 30.0  # archive.ServingConfig's default responseTimeout (not imported: that pulls in torch)


class Client:
    """One keep-alive HTTP client for TorchServe's inference, management and metrics APIs."""

    def __init__(
        self,
        home: str | os.PathLike | None = None,
        inference_url: str | None = None,
        management_url: str | None = None,
        metrics_url: str | None = None,
        token: str | None = None,
        management_token: str | None = None,
        api_key: str | None = None,
        request_timeout: float = REQUEST_S,
        retries: int = 2,
        backoff: float = 0.2,
        response_timeout: float = FALLBACK_RESPONSE_TIMEOUT_S,
        **old: Any,
    ) -> None:
        """request_timeout: seconds to wait for each answer (`timeout`, its old spelling, still works for one release
        and warns); response_timeout: the model's responseTimeout assumed when the management API cannot tell it."""
        request_timeout = renamed_keywords("Client", old, {"timeout": "request_timeout"}).get("request_timeout", request_timeout)
        self._keys = _tokens.Keys(token, management_token, api_key)
        if home is not None:
            info = _home.load_info(home)
            if info is None:
                raise ClientError(f"no server recorded in {Path(home) / 'server.json'}; start one first")
            inference_url = inference_url or info.inference_url
            management_url = management_url or info.management_url
            metrics_url = metrics_url or info.metrics_url
            try:
                stored = _tokens.Keys.of_server(info)
            except TorchServeError as e:
                raise ClientError(str(e)) from None
            self._keys = _tokens.Keys(token or stored.inference, management_token or stored.management,
                                      api_key or stored.api, stored.key_file)  # fmt: skip
        self.inference_url = inference_url.rstrip("/") if inference_url else None
        self.management_url = management_url.rstrip("/") if management_url else None
        self.metrics_url = metrics_url.rstrip("/") if metrics_url else None
        self._keys.management_url = self.management_url
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.response_timeout = float(response_timeout)  # assumed when a model's own cannot be read
        self._response_timeouts: dict[tuple[str, str | None], float] = {}
        self._http = http_client(request_timeout)
        self.timeout = self._http.timeout

    @property
    def key_file(self) -> Path | None:
        """Return the key file the keys come from and are renewed in (None for keys given by hand)."""
        return self._keys.key_file

    @property
    def token(self) -> str | None:
        """Return the inference key in use (renewed when the server refuses it)."""
        return self._keys.inference

    @property
    def management_token(self) -> str | None:
        """Return the management key in use (renewed when the server refuses it)."""
        return self._keys.management

    @property
    def api_key(self) -> str | None:
        """Return the API key that renews the others through TorchServe's token API."""
        return self._keys.api

    # ----------------------------------------------------------------------------------------- public API

    def predict(self, name: str, body: Any, version: str | None = None) -> Any:
        """Return the decoded JSON answer of POST /predictions/NAME[/VERSION] (text if the answer is not JSON).

        body: a dict/list (or other JSON value) is JSON-encoded; bytes or str are sent as they are.
        """
        url = f"{self._require(self.inference_url, 'inference_url')}/predictions/{name}"
        if version is not None:
            url += f"/{version}"
        if isinstance(body, (bytes, bytearray)):
            content = bytes(body)
        elif isinstance(body, str):
            content = body.encode("utf-8")
        else:
            content = json.dumps(body).encode("utf-8")
        try:
            response = self._send(
                "POST", url, "inference", content=content, headers={"Content-Type": "application/json"},
                retries=self.retries, model=(name, version),
            )  # fmt: skip
        except NotFound as e:
            raise self._not_found(e, name, version) from None
        return _decode(response)

    def models(self) -> list[str]:
        """Return the names of the models the server serves (GET /models of the management API, every page)."""
        url = f"{self._require(self.management_url, 'management_url')}/models"
        return model_names(lambda params: _decode(self._send("GET", url, "management", params=params, retries=self.retries)))

    def describe(self, name: str, version: str | None = None, customized: bool = True) -> Any:
        """Return TorchServe's description of NAME[/VERSION] (a list of versions), customizedMetadata decoded."""
        url = f"{self._require(self.management_url, 'management_url')}/models/{name}"
        if version is not None:
            url += f"/{version}"
        params = {"customized": "true"} if customized else None
        answer = _decode(self._send("GET", url, "management", params=params, retries=self.retries))
        for entry in answer if isinstance(answer, list) else [answer]:
            meta = entry.get("customizedMetadata") if isinstance(entry, dict) else None
            if isinstance(meta, str):
                try:
                    entry["customizedMetadata"] = json.loads(meta)
                except ValueError:
                    pass
        return answer

    def ready(self, name: str) -> bool:
        """Return True when every version of NAME has at least minWorkers (and one) READY workers.

        An unknown model or an unreachable server is "not ready" (False); a token problem still raises.
        """
        url = f"{self._require(self.management_url, 'management_url')}/models/{name}/all"
        try:
            versions = _decode(self._send("GET", url, "management", retries=0))
        except (NotFound, ConnectionFailed, ServiceUnavailable):
            return False
        if not isinstance(versions, list) or not versions:
            return False
        for v in versions:
            ready = sum(1 for w in v.get("workers", []) if w.get("status") == "READY")
            if ready < max(1, int(v.get("minWorkers", 1))):
                return False
        return True

    def metrics(self) -> str:
        """Return the Prometheus text of GET /metrics (the metrics API needs no token)."""
        url = f"{self._require(self.metrics_url, 'metrics_url')}/metrics"
        return self._send("GET", url, None, retries=self.retries).text

    def close(self) -> None:
        """Close the underlying connections."""
        self._http.close()

    def __enter__(self) -> "Client":
        """Return this client (closed again on leaving the block)."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the client; exceptions propagate."""
        self.close()

    # ----------------------------------------------------------------------------------------- internals

    @staticmethod
    def _require(url: str | None, what: str) -> str:
        """Return url, or raise ClientError saying which URL is missing."""
        if not url:
            raise ClientError(f"{what} is not set; pass it or home=")
        return url

    def complete(self, name: str, prompt: str, version: str | None = None, max_tokens: int | None = None) -> dict:
        """Return a generation model's OpenAI completion answer to `prompt` (POST /predictions/NAME/VERSION/v1/completions).

        version: None asks the management API for the default version (the OpenAI routes need the version segment).
        max_tokens: None takes the model's default (its generation_config.json, else up to its context).
        """
        version = version or self._default_version(name)
        body = {"model": name, "prompt": prompt, **({"max_tokens": max_tokens} if max_tokens is not None else {})}
        url = f"{self._require(self.inference_url, 'inference_url')}/predictions/{name}/{version}/v1/completions"
        try:
            response = self._send("POST", url, "inference", content=json.dumps(body).encode("utf-8"),
                                  headers={"Content-Type": "application/json"}, retries=0, model=(name, version))  # fmt: skip
        except NotFound as e:
            raise self._not_found(e, name, version) from None
        return _decode(response)

    def chat_stream(self, name: str, messages: list, version: str | None = None, max_tokens: int | None = None):
        """Yield the pieces of a generation model's chat answer as they stream (POST .../v1/chat/completions, stream).

        Not retried and its key not renewed mid-stream; a refusal raises the typed error, a failure after the
        stream began raises ServerError with the server's message.
        """
        version = version or self._default_version(name)
        body = {"model": name, "messages": messages, "stream": True,
                **({"max_tokens": max_tokens} if max_tokens is not None else {})}  # fmt: skip
        url = f"{self._require(self.inference_url, 'inference_url')}/predictions/{name}/{version}/v1/chat/completions"
        headers = {"Content-Type": "application/json", **self._keys.header("inference")}
        try:
            with self._http.stream("POST", url, content=json.dumps(body).encode("utf-8"), headers=headers) as r:
                if r.status_code >= 400:
                    r.read()
                    raise classify(r)
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[len("data: "):])
                    if isinstance(event.get("error"), dict):
                        raise ServerError(str(event["error"].get("message")), status=r.status_code, response=r)
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece
        except httpx.TransportError as e:
            raise ConnectionFailed(f"{type(e).__name__}: {e or 'no answer'} (POST {url})") from e

    def _default_version(self, name: str) -> str:
        """Return NAME's default version as the management API tells it (the OpenAI routes need the version segment)."""
        try:
            return str(self.describe(name, customized=False)[0]["modelVersion"])
        except (LookupError, TypeError) as e:
            raise ClientError(f"{name}: the management API did not tell its default version ({e}); give the version") from None

    def response_timeout_of(self, name: str, version: str | None = None) -> float:
        """Return the seconds of NAME[/VERSION]'s responseTimeout from the management API (cached), else response_timeout."""
        key = (name, version)
        if key not in self._response_timeouts:
            try:
                entry = self.describe(name, version, customized=False)[0]
                seconds = float(entry["responseTimeout"])
            except (ClientError, LookupError, TypeError, ValueError):  # no management access, or an odd answer
                return self.response_timeout  # not cached: the management API may answer next time
            self._response_timeouts[key] = seconds
        return self._response_timeouts[key]

    def _send(
        self, method: str, url: str, kind: str | None, *, retries: int, model: tuple | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Return the successful response, retrying transient failures; raise the typed error otherwise.

        model: (name, version) of a prediction, so that a "Worker died." that came after the model's
        responseTimeout is told apart as RequestTimedOut (and not retried).
        """
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                response = _tokens.send(self._http, method, url, kind, self._keys, **kwargs)  # renews a refused key once
            except httpx.TransportError as e:
                error: ClientError = ConnectionFailed(f"{type(e).__name__}: {e or 'no answer'} ({method} {url})")
                error.__cause__ = e
                retryable = isinstance(e, _RETRY_TRANSPORT)
            except TorchServeError as e:  # the key file could not be read for a renewal
                raise ClientError(str(e)) from None
            else:
                if response.status_code < 400:
                    return response
                error = classify(response)
                if isinstance(error, WorkerDied) and model is not None:
                    error = self._timed_out(error, time.monotonic() - started, *model)
                retryable = isinstance(error, _RETRY_STATUS) and not isinstance(error, RequestTimedOut)
            if not retryable or attempt >= retries:
                raise error
            time.sleep(self.backoff * (2**attempt))
            attempt += 1

    def _not_found(self, error: NotFound, name: str, version: str | None) -> NotFound:
        """Return error with the served models (or NAME's versions) added to its message, when the management API tells.

        A 404 for a misspelled name is answered best with what is served; without management access, error as it is.
        """
        try:
            served = self.models()
            if name in served and version is not None:
                versions = [str(v.get("modelVersion")) for v in self.describe(name, "all", customized=False)]
                known = f"{name}'s versions: {some_of(versions, 10)}"
            else:
                known = f"served models: {some_of(sorted(served), 10)}" if served else "no model is served"
        except (ClientError, LookupError, TypeError, AttributeError):
            return error
        return NotFound(f"{error.message}; {known}", status=error.status, type=error.type, response=error.response)

    def _timed_out(self, error: WorkerDied, seconds: float, name: str, version: str | None) -> WorkerDied:
        """Return error as a RequestTimedOut when its attempt lasted at least the model's responseTimeout, else error."""
        limit = self.response_timeout_of(name, version)
        if seconds < limit:
            return error
        message = (f"{error.message} The attempt lasted {seconds:.1f} s, at least {name}'s responseTimeout of {limit:g} s: "
                   "TorchServe timed the request out (not retried)")  # fmt: skip
        return RequestTimedOut(message, status=error.status, type=error.type, response=error.response)


def _decode(response: httpx.Response) -> Any:
    """Return the JSON value of a response body, or its text when it is not JSON."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text

