"""TorchServe's token keys: reading HOME/key_file.json, and sending a request whose refused key is renewed once.

`send` is the one place a request carries a key and an expired key is renewed (the management calls of
`serving/` and `aiaas_torch.client.Client` both go through it). Keys expire (token_expiration_min, 60 by default). TorchServe 0.12's GET /token?type=KIND, authorised by the API
key (which does not expire), answers 200 with an empty body and writes the new key only into key_file.json, so a
key can be renewed only with the key file at hand.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .errors import TorchServeError
from .home import KEY_FILE, ServerInfo, load_info
from .httpclient import TOKEN_S, http_client

# What a refused token tells its user (the client's TokenError, the gateway's 401): the key rotates, and a key is
# bound to the server home that issued it.
TOKEN_HINT = "token missing or expired: run `aiaas serve token` (or pass --home of the server that issued it)"


class RenewalRefused(TorchServeError):
    """The token API refused to renew a key; `response` is its answer."""

    def __init__(self, response: httpx.Response):
        self.response = response
        super().__init__(f"token renewal answered {response.status_code}: {response.text[:200]}")


def _key_document(home: str | os.PathLike) -> tuple[Path, dict]:
    """Return (the key file's path, its JSON document) for HOME or a key file path."""
    path = Path(home)
    if path.is_dir():
        path = path / KEY_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TorchServeError(f"no TorchServe key file at {path}; is the server running with token auth?") from None
    except ValueError as e:
        raise TorchServeError(f"TorchServe key file {path} is not JSON ({e})") from None
    return path, data


def read_keys(home: str | os.PathLike = ".aiaas") -> dict[str, str]:
    """Return {"management", "inference", "api"} keys from HOME/key_file.json (a key file path also works)."""
    path, data = _key_document(home)
    try:
        return {
            "management": data["management"]["key"],
            "inference": data["inference"]["key"],
            "api": data["API"]["key"],
        }
    except (KeyError, TypeError):
        raise TorchServeError(f"unexpected key file layout in {path}: {sorted(data)}") from None


def fresh_key(
    http: httpx.Client, key_file: str | os.PathLike, kind: str, current: str | None,
    management_url: str | None, api_key: str | None,
) -> str:  # fmt: skip
    """Return the KIND ("inference" or "management") key now in the key file, renewed first if it is still `current`.

    Someone may have renewed it already, so the file is read first; the token API is asked only when the file
    still holds the refused key and both management_url and api_key are known. Raises RenewalRefused when the
    token API answers >= 400, TorchServeError when the key file is unreadable, httpx.TransportError as it comes.
    """
    key = read_keys(key_file)[kind]
    if key == current and api_key and management_url:
        r = http.get(f"{management_url}/token", params={"type": kind}, headers={"Authorization": f"Bearer {api_key}"})
        if r.status_code >= 400:
            raise RenewalRefused(r)
        key = read_keys(key_file)[kind]
    return key


def key_expires(home: str | os.PathLike, kind: str) -> float | None:
    """Return when HOME's KIND key expires, in seconds since the epoch (None when the key file does not say)."""
    _, data = _key_document(home)
    try:
        when = _dt.datetime.fromisoformat(str(data[kind]["expiration time"]).replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError):
        return None
    return when.timestamp() if when.tzinfo else None


def current_key(info: ServerInfo, kind: str = "inference", margin_s: float = 60.0) -> str:
    """Return the server's KIND key, renewed first through the token API when it expires within margin_s seconds.

    For clients outside this package (curl, scripts), which cannot renew a key themselves.
    """
    key = read_keys(info.key_file)[kind]
    expires = key_expires(info.key_file, kind)
    if expires is None or expires - time.time() > margin_s:
        return key
    with http_client(TOKEN_S) as http:
        try:
            return fresh_key(http, info.key_file, kind, key, info.management_url, read_keys(info.key_file)["api"])
        except httpx.TransportError as e:
            raise TorchServeError(f"renewing the {kind} key failed: {e!r}") from None


@dataclass
class Keys:
    """The keys a caller sends (inference, management, api) and what renewing them needs (key file, management URL)."""

    inference: str | None = None
    management: str | None = None
    api: str | None = None
    key_file: Path | None = None  # None: keys given by hand, never renewed
    management_url: str | None = None

    @classmethod
    def of_server(cls, info: ServerInfo) -> "Keys":
        """Return the keys now in a server's key file, renewable through its token API."""
        keys = read_keys(info.key_file)
        return cls(keys["inference"], keys["management"], keys["api"], Path(info.key_file), info.management_url)

    def header(self, kind: str | None) -> dict[str, str]:
        """Return the Authorization header carrying KIND's key ({} for no kind or no key known)."""
        key = getattr(self, kind) if kind in ("inference", "management") else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def renew(self, http: httpx.Client, kind: str) -> bool:
        """Return True when KIND's key changed: the key file holds another one already, or the token API renewed it.

        Raises RenewalRefused, TorchServeError (key file unreadable) or httpx.TransportError as fresh_key does.
        """
        if self.key_file is None:
            return False
        current = getattr(self, kind)
        fresh = fresh_key(http, self.key_file, kind, current, self.management_url, self.api)
        setattr(self, kind, fresh)
        return fresh != current


def key_refused(response: httpx.Response) -> bool:
    """Return True when TorchServe refused the request's key: a 400 whose JSON type is InvalidKeyException."""
    if response.status_code != 400:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("type") == "InvalidKeyException"


def send(http: httpx.Client, method: str, url: str, kind: str | None, keys: Keys, **request) -> httpx.Response:
    """Return the answer to METHOD url carrying KIND's key; a refused key is renewed once (Keys.renew) and the request
    sent again with the new one.

    When the token API refuses the renewal, the first answer (the refused key) is returned for the caller to report.
    Raises TorchServeError when the key file is unreadable and httpx.TransportError when a connection breaks.
    """
    headers = request.pop("headers", None) or {}
    r = http.request(method, url, headers={**headers, **keys.header(kind)}, **request)
    if kind and key_refused(r):
        try:
            renewed = keys.renew(http, kind)
        except RenewalRefused:
            return r
        if renewed:
            r = http.request(method, url, headers={**headers, **keys.header(kind)}, **request)
    return r


class ServerToken(httpx.Auth):
    """httpx authentication that sends a server's key and, when TorchServe refuses it as expired, renews it through
    the token API and sends the request once more: for long-lived clients that are not ours, such as the openai SDK::

        openai.OpenAI(base_url=URL, api_key="aiaas", http_client=httpx.Client(auth=ServerToken(".aiaas")))

    (the SDK's own api_key is overwritten on every request). Renewal needs the server's home (its key file).
    """

    requires_response_body = True  # key_refused reads the JSON body of a 400

    def __init__(self, home: str | os.PathLike = ".aiaas", kind: str = "inference"):
        if kind not in ("inference", "management"):
            raise ValueError(f"kind must be 'inference' or 'management', not {kind!r}")
        info = load_info(home)
        if info is None:
            raise TorchServeError(f"no server recorded in {Path(home) / 'server.json'}; start one first (aiaas serve start)")
        self.keys, self.kind = Keys.of_server(info), kind

    def auth_flow(self, request: httpx.Request):
        """Yield the request with the key; after a refused key, yield it again with the renewed one."""
        request.headers.update(self.keys.header(self.kind))
        response = yield request
        if not key_refused(response):
            return
        with http_client(TOKEN_S) as http:
            try:
                renewed = self.keys.renew(http, self.kind)
            except RenewalRefused:
                return
        if renewed:
            request.headers.update(self.keys.header(self.kind))
            yield request
