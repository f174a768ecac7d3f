"""Client error classification, retries, timeouts and token refresh against a scripted HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from aiaas_torch.client import (
    BadRequest,
    Client,
    ClientError,
    ConnectionFailed,
    StatusError,
    NotFound,
    RequestTimedOut,
    ServerError,
    ServiceUnavailable,
    TokenError,
    WorkerDied,
    classify,
)

INVALID_KEY = {
    "code": 400,
    "type": "InvalidKeyException",
    "message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly",
}
WORKER_DIED = {"code": 500, "type": "InternalServerException", "message": "Worker died."}


class Reply:
    """One scripted answer: status, JSON (or raw bytes) body, optional reason phrase and delay."""

    def __init__(self, status=200, body=None, reason=None, delay=0.0):
        self.status, self.body, self.reason, self.delay = status, body, reason, delay


class ScriptedServer:
    """A tiny HTTP server: each path answers its script in order (the last reply repeats); requests are logged."""

    def __init__(self):
        self.scripts: dict[str, list] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                record = {
                    "method": self.command,
                    "path": parts.path,
                    "query": parse_qs(parts.query),
                    "headers": dict(self.headers.items()),
                    "body": body,
                    "peer": self.client_address,
                }
                with outer.lock:
                    outer.requests.append(record)
                    script = outer.scripts.get(parts.path, [Reply(404, {"code": 404, "type": "X", "message": "no script"})])
                    reply = script.pop(0) if len(script) > 1 else script[0]
                if callable(reply):
                    reply = reply(record)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                self.send_response(reply.status, reply.reason)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def script(self, path, *replies):
        """Set the replies for path."""
        with self.lock:
            self.scripts[path] = list(replies)

    def calls(self, path):
        """Return the requests made to path."""
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    server = ScriptedServer()
    yield server
    server.close()


def make_client(fake, **kwargs):
    """Return a Client whose three APIs all point at the scripted server."""
    kwargs.setdefault("token", "INF")
    kwargs.setdefault("management_token", "MGT")
    kwargs.setdefault("backoff", 0.01)
    return Client(inference_url=fake.url, management_url=fake.url, metrics_url=fake.url, **kwargs)


def free_closed_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------------------------- success paths


def test_predict_sends_json_with_inference_token(fake):
    fake.script("/predictions/m", Reply(200, [{"y": 2.0}]))
    with make_client(fake) as client:
        assert client.predict("m", {"x": [1.0]}) == [{"y": 2.0}]
    (call,) = fake.calls("/predictions/m")
    assert call["method"] == "POST"
    assert json.loads(call["body"]) == {"x": [1.0]}
    assert call["headers"]["Authorization"] == "Bearer INF"
    assert call["headers"]["Content-Type"] == "application/json"


def test_predict_sends_bytes_and_str_as_is_and_uses_version(fake):
    fake.script("/predictions/m/2.0", Reply(200, {"ok": True}))
    with make_client(fake) as client:
        client.predict("m", b'{"raw": 1}', version="2.0")
        client.predict("m", '{"raw": 2}', version="2.0")
    bodies = [c["body"] for c in fake.calls("/predictions/m/2.0")]
    assert bodies == [b'{"raw": 1}', b'{"raw": 2}']


def test_keep_alive_reuses_one_connection(fake):
    fake.script("/predictions/m", Reply(200, {}))
    with make_client(fake) as client:
        for _ in range(3):
            client.predict("m", {})
    peers = {c["peer"] for c in fake.calls("/predictions/m")}
    assert len(fake.calls("/predictions/m")) == 3 and len(peers) == 1


# --------------------------------------------------------------------------------------------- classification


def test_token_error_is_told_apart_from_bad_request_by_type(fake):
    fake.script("/predictions/tok", Reply(400, INVALID_KEY))
    fake.script("/predictions/bad", Reply(400, {"code": 400, "type": "BadRequestException", "message": "bad body"}))
    with make_client(fake) as client:
        with pytest.raises(TokenError) as tok:
            client.predict("tok", {})
        with pytest.raises(BadRequest) as bad:
            client.predict("bad", {})
    assert not isinstance(tok.value, BadRequest) and not isinstance(bad.value, TokenError)
    assert tok.value.status == 400 and tok.value.type == "InvalidKeyException"
    assert bad.value.type == "BadRequestException" and bad.value.message == "bad body"
    assert bad.value.response is not None and bad.value.response.status_code == 400
    # 4xx is never retried, and without a key file there is no token refresh either.
    assert len(fake.calls("/predictions/tok")) == 1 and len(fake.calls("/predictions/bad")) == 1


def test_not_found_is_not_retried(fake):
    fake.script("/predictions/nope", Reply(404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: nope"}))
    with make_client(fake, retries=3) as client:
        with pytest.raises(NotFound) as err:
            client.predict("nope", {})
    assert err.value.type == "ModelNotFoundException" and "nope" in str(err.value)
    assert len(fake.calls("/predictions/nope")) == 1


def test_per_request_status_from_handler_keeps_reason_phrase(fake):
    # context.set_response_status(422, "bad row") answers 422 with the reason phrase and the handler's body.
    fake.script("/predictions/m", Reply(422, {"error": "bad row"}, reason="bad row"))
    with make_client(fake) as client:
        with pytest.raises(StatusError) as err:
            client.predict("m", {})
    assert type(err.value) is StatusError
    assert err.value.status == 422 and err.value.message == "bad row" and err.value.type is None


def test_worker_died_is_retried_then_raised(fake):
    fake.script("/predictions/m", Reply(500, WORKER_DIED))
    with make_client(fake, retries=2) as client:
        with pytest.raises(WorkerDied) as err:
            client.predict("m", {})
    assert isinstance(err.value, ServerError)
    assert err.value.message == "Worker died."
    assert len(fake.calls("/predictions/m")) == 3  # first try + 2 retries


def test_other_500_is_server_error_and_not_retried(fake):
    fake.script("/predictions/m", Reply(500, {"code": 500, "type": "InternalServerException", "message": "boom"}))
    with make_client(fake, retries=2) as client:
        with pytest.raises(ServerError) as err:
            client.predict("m", {})
    assert not isinstance(err.value, WorkerDied)
    assert len(fake.calls("/predictions/m")) == 1


def test_503_is_retried_with_exponential_backoff_then_succeeds(fake):
    busy = Reply(503, {"code": 503, "type": "ServiceUnavailableException", "message": "Model is not ready"})
    fake.script("/predictions/m", busy, busy, Reply(200, {"y": 1}))
    with make_client(fake, retries=2, backoff=0.1) as client:
        started = time.monotonic()
        assert client.predict("m", {}) == {"y": 1}
        elapsed = time.monotonic() - started
    assert len(fake.calls("/predictions/m")) == 3
    assert elapsed >= 0.1 + 0.2  # backoff, then twice the backoff


def test_503_exhausts_retries_as_service_unavailable(fake):
    fake.script("/predictions/m", Reply(503, {"code": 503, "type": "ServiceUnavailableException", "message": "busy"}))
    with make_client(fake, retries=1) as client:
        with pytest.raises(ServiceUnavailable):
            client.predict("m", {})
    assert len(fake.calls("/predictions/m")) == 2


def test_retries_zero_means_one_attempt(fake):
    fake.script("/predictions/m", Reply(500, WORKER_DIED))
    with make_client(fake, retries=0) as client:
        with pytest.raises(WorkerDied):
            client.predict("m", {})
    assert len(fake.calls("/predictions/m")) == 1


@pytest.mark.parametrize("status", [400, 404, 405, 413, 415, 422, 429])
def test_no_4xx_is_retried(fake, status):
    fake.script("/predictions/m", Reply(status, {"code": status, "type": "X", "message": "refused"}))
    with make_client(fake, retries=3) as client:
        with pytest.raises(StatusError) as err:
            client.predict("m", {})
    assert err.value.status == status
    assert len(fake.calls("/predictions/m")) == 1


def test_worker_died_after_the_models_response_timeout_is_a_timeout_and_not_retried(fake):
    fake.script("/models/m", Reply(200, [{"modelName": "m", "modelVersion": "1.0", "responseTimeout": 1}]))
    fake.script("/predictions/m", Reply(500, WORKER_DIED, delay=1.1))
    with make_client(fake, retries=2) as client:
        for _ in range(2):
            with pytest.raises(RequestTimedOut) as err:
                client.predict("m", {})
            assert isinstance(err.value, WorkerDied) and err.value.status == 500
            assert err.value.message.startswith("Worker died.") and "responseTimeout of 1 s" in err.value.message
    assert len(fake.calls("/predictions/m")) == 2  # one attempt per call
    assert len(fake.calls("/models/m")) == 1  # the timeout was read once, then cached
    assert fake.calls("/models/m")[0]["headers"]["Authorization"] == "Bearer MGT"


def test_worker_died_before_the_models_response_timeout_is_a_crash_and_retried(fake):
    fake.script("/models/m/2.0", Reply(200, [{"modelName": "m", "modelVersion": "2.0", "responseTimeout": 5}]))
    fake.script("/predictions/m/2.0", Reply(500, WORKER_DIED, delay=0.3), Reply(200, {"y": 1}))
    with make_client(fake, retries=2) as client:
        assert client.predict("m", {}, version="2.0") == {"y": 1}
    assert len(fake.calls("/predictions/m/2.0")) == 2 and len(fake.calls("/models/m/2.0")) == 1


def test_without_management_access_the_assumed_response_timeout_decides(fake):
    fake.script("/predictions/slow", Reply(500, WORKER_DIED, delay=0.5))
    fake.script("/predictions/fast", Reply(500, WORKER_DIED))
    with Client(inference_url=fake.url, token="INF", retries=2, backoff=0.01, response_timeout=0.4) as client:
        with pytest.raises(RequestTimedOut):
            client.predict("slow", {})
        with pytest.raises(WorkerDied) as fast:
            client.predict("fast", {})
    assert type(fast.value) is WorkerDied
    assert len(fake.calls("/predictions/slow")) == 1 and len(fake.calls("/predictions/fast")) == 3


def test_the_assumed_response_timeout_is_the_archives_default():
    from aiaas_torch.archive import ServingConfig
    from aiaas_torch.client import FALLBACK_RESPONSE_TIMEOUT_S

    assert Client(inference_url="http://127.0.0.1:1").response_timeout == FALLBACK_RESPONSE_TIMEOUT_S == ServingConfig().response_timeout_s


# --------------------------------------------------------------------------------------------- transport


def test_connection_refused_is_retried_then_connection_failed():
    url = f"http://127.0.0.1:{free_closed_port()}"
    client = Client(inference_url=url, token="t", retries=2, backoff=0.05)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as err:
        client.predict("m", {})
    elapsed = time.monotonic() - started
    client.close()
    assert err.value.status is None and isinstance(err.value, ClientError)
    assert 0.05 + 0.1 <= elapsed < 5.0  # two backoffs were slept, and refusal is fast


def test_silent_server_times_out_once_within_the_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def accept_and_hold():
        try:
            while True:
                conn, _ = listener.accept()
                accepted.append(conn)  # never answer
        except OSError:
            pass

    threading.Thread(target=accept_and_hold, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    client = Client(inference_url=url, token="t", request_timeout=0.5, retries=2, backoff=0.01)
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionFailed) as err:
            client.predict("m", {})
        elapsed = time.monotonic() - started
    finally:
        client.close()
        listener.close()
        for conn in accepted:
            conn.close()
    assert "ReadTimeout" in str(err.value)
    assert 0.4 <= elapsed < 2.0
    assert len(accepted) == 1  # a read timeout is not retried: the handler might still be working


# --------------------------------------------------------------------------------------------- tokens


def write_home(tmp_path: Path, url: str, inference="OLD", management="MGT", api="API") -> Path:
    """Write a fake instance home (server.json + key_file.json) pointing at url; return it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "server.json").write_text(
        json.dumps(
            {
                "home": str(home),
                "pid": 1,
                "inference_url": url,
                "management_url": url,
                "metrics_url": url,
                "key_file": str(home / "key_file.json"),
                "model_store": str(tmp_path),
            }
        )
    )
    write_keys(home, inference, management, api)
    return home


def write_keys(home: Path, inference: str, management: str = "MGT", api: str = "API") -> None:
    """Write a key file in TorchServe 0.12's layout."""
    (home / "key_file.json").write_text(
        json.dumps(
            {
                "management": {"key": management, "expiration time": "2099-01-01T00:00:00Z"},
                "inference": {"key": inference, "expiration time": "2099-01-01T00:00:00Z"},
                "API": {"key": api},
            }
        )
    )


def test_client_from_home_reads_urls_and_keys(fake, tmp_path):
    home = write_home(tmp_path, fake.url, inference="I1", management="M1", api="A1")
    fake.script("/models/m", Reply(200, [{"modelName": "m"}]))
    with Client(home=home) as client:
        assert (client.inference_url, client.token, client.management_token, client.api_key) == (fake.url, "I1", "M1", "A1")
        client.describe("m")
    assert fake.calls("/models/m")[0]["headers"]["Authorization"] == "Bearer M1"


def test_client_without_server_json_says_so(tmp_path):
    with pytest.raises(ClientError, match="server.json"):
        Client(home=tmp_path)


def test_expired_token_is_refreshed_through_the_token_api_then_retried(fake, tmp_path):
    home = write_home(tmp_path, fake.url, inference="OLD")

    def predictions(record):
        ok = record["headers"].get("Authorization") == "Bearer NEW"
        return Reply(200, {"y": 1}) if ok else Reply(400, INVALID_KEY)

    def token_api(record):
        # Like TorchServe 0.12: the API key rotates the key, writes it to key_file.json, answers an empty body.
        if record["headers"].get("Authorization") != "Bearer API":
            return Reply(400, {**INVALID_KEY, "message": "Token Authentication failed."})
        write_keys(home, "NEW")
        return Reply(200, b"\n")

    fake.script("/predictions/m", predictions)
    fake.script("/token", token_api)
    with Client(home=home, retries=0) as client:
        assert client.predict("m", {}) == {"y": 1}
        assert client.token == "NEW"
    (refresh,) = fake.calls("/token")
    assert refresh["query"] == {"type": ["inference"]}
    assert [c["headers"]["Authorization"] for c in fake.calls("/predictions/m")] == ["Bearer OLD", "Bearer NEW"]


def test_key_rotated_by_someone_else_is_picked_up_without_the_token_api(fake, tmp_path):
    home = write_home(tmp_path, fake.url, inference="OLD")
    fake.script("/predictions/m", lambda r: Reply(200, {}) if r["headers"]["Authorization"] == "Bearer OTHER" else Reply(400, INVALID_KEY))
    fake.script("/token", Reply(500, {"message": "must not be called"}))
    with Client(home=home) as client:
        write_keys(home, "OTHER")
        assert client.predict("m", {}) == {}
    assert fake.calls("/token") == []


def test_token_refresh_happens_once_per_call(fake, tmp_path):
    home = write_home(tmp_path, fake.url, inference="OLD")
    fake.script("/predictions/m", Reply(400, INVALID_KEY))  # refuses every key

    def token_api(record):
        write_keys(home, f"K{len(fake.calls('/token'))}")
        return Reply(200, b"\n")

    fake.script("/token", token_api)
    with Client(home=home, retries=3) as client:
        with pytest.raises(TokenError):
            client.predict("m", {})
    assert len(fake.calls("/token")) == 1
    assert len(fake.calls("/predictions/m")) == 2


def test_management_token_is_refreshed_too(fake, tmp_path):
    home = write_home(tmp_path, fake.url, management="MOLD")
    fake.script("/models/m", lambda r: Reply(200, [{}]) if r["headers"]["Authorization"] == "Bearer MNEW" else Reply(400, INVALID_KEY))

    def token_api(record):
        assert record["query"] == {"type": ["management"]}
        write_keys(home, "OLD", management="MNEW")
        return Reply(200, b"\n")

    fake.script("/token", token_api)
    with Client(home=home) as client:
        assert client.describe("m") == [{}]
        assert client.management_token == "MNEW"


# --------------------------------------------------------------------------------------------- management & metrics


def test_describe_asks_for_customized_and_decodes_the_card(fake):
    card = {"input": {"columns": ["x"]}}
    fake.script("/models/m/1.0", Reply(200, [{"modelName": "m", "modelVersion": "1.0", "customizedMetadata": json.dumps(card)}]))
    with make_client(fake) as client:
        (entry,) = client.describe("m", version="1.0")
    assert entry["customizedMetadata"] == card
    (call,) = fake.calls("/models/m/1.0")
    assert call["query"] == {"customized": ["true"]}
    assert call["headers"]["Authorization"] == "Bearer MGT"


def test_ready_needs_min_workers_ready_in_every_version(fake):
    ready = {"minWorkers": 1, "workers": [{"status": "READY"}]}
    fake.script("/models/ok/all", Reply(200, [ready, {"minWorkers": 2, "workers": [{"status": "READY"}] * 2}]))
    fake.script("/models/half/all", Reply(200, [ready, {"minWorkers": 2, "workers": [{"status": "READY"}, {"status": "UNLOADING"}]}]))
    fake.script("/models/zero/all", Reply(200, [{"minWorkers": 0, "workers": []}]))
    fake.script("/models/gone/all", Reply(404, {"code": 404, "type": "ModelNotFoundException", "message": "gone"}))
    fake.script("/models/tok/all", Reply(400, INVALID_KEY))
    with make_client(fake) as client:
        assert client.ready("ok") is True
        assert client.ready("half") is False
        assert client.ready("zero") is False  # no worker at all cannot serve
        assert client.ready("gone") is False
        with pytest.raises(TokenError):
            client.ready("tok")


def test_ready_is_false_when_server_is_down():
    client = Client(management_url=f"http://127.0.0.1:{free_closed_port()}", management_token="t", retries=5)
    started = time.monotonic()
    assert client.ready("m") is False
    assert time.monotonic() - started < 2.0  # no retries for a readiness probe
    client.close()


def test_metrics_returns_text_without_a_token(fake):
    fake.script("/metrics", Reply(200, b"# HELP Requests2XX x\nRequests2XX{Level=\"Host\",} 3.0\n"))
    with make_client(fake) as client:
        text = client.metrics()
    assert "Requests2XX" in text
    assert "Authorization" not in fake.calls("/metrics")[0]["headers"]


def test_missing_url_is_a_clear_client_error():
    with Client(token="t") as client:
        with pytest.raises(ClientError, match="inference_url"):
            client.predict("m", {})


def test_the_package_level_server_error_is_the_one_predict_raises():
    """ai.ServerError catches a 5xx from predict; TorchServe process-control failures are ai.TorchServeError."""
    import aiaas_torch as ai

    answer = httpx.Response(500, json={"code": 500, "message": "boom"}, request=httpx.Request("POST", "http://127.0.0.1:1/p"))
    assert isinstance(classify(answer), ai.ServerError)
    assert issubclass(ai.ServerError, ai.ClientError)
    assert not issubclass(ai.TorchServeError, ai.ClientError) and not issubclass(ai.ServerError, ai.TorchServeError)


# ------------------------------------------------------------------- one owner each: the client and serving/ agree


def _renewing_token_api(fake, home, kind):
    """Script /token like TorchServe 0.12: the API key renews KIND's key into the key file, answering an empty body."""

    def token_api(record):
        assert record["headers"].get("Authorization") == "Bearer API" and record["query"] == {"type": [kind]}
        write_keys(home, "INEW" if kind == "inference" else "OLD", management="MNEW" if kind == "management" else "MOLD")
        return Reply(200, b"\n")

    fake.script("/token", token_api)


def test_client_and_the_management_calls_renew_an_expired_key_the_same_way(fake, tmp_path):
    """Both callers send the same requests: the refused key, one renewal through the token API, the renewed key."""
    from aiaas_torch.serving import home as server_home, management

    home = write_home(tmp_path, fake.url, inference="OLD", management="MOLD")
    fake.script("/models/m", lambda r: Reply(200, [{"modelName": "m"}]) if r["headers"]["Authorization"] == "Bearer MNEW"
                else Reply(400, INVALID_KEY))
    _renewing_token_api(fake, home, "management")
    with Client(home=home, retries=0) as client:
        assert client.describe("m", customized=False) == [{"modelName": "m"}]
    by_client = [(c["path"], c["headers"]["Authorization"]) for c in fake.requests]

    fake.requests.clear()
    write_keys(home, "OLD", management="MOLD")
    with httpx.Client(trust_env=False) as http:
        answer = management.mgmt_call(http, server_home.load_info(home), "GET", "/models/m")
    assert answer.status_code == 200 and answer.json() == [{"modelName": "m"}]
    by_management = [(c["path"], c["headers"]["Authorization"]) for c in fake.requests]
    assert by_client == by_management == [("/models/m", "Bearer MOLD"), ("/token", "Bearer API"), ("/models/m", "Bearer MNEW")]


def test_a_bad_request_that_mentions_the_key_exception_renews_no_key_on_either_side(fake, tmp_path):
    """Only TorchServe's error type says a key was refused; the management side once matched the words in the body."""
    from aiaas_torch.serving import home as server_home, management

    home = write_home(tmp_path, fake.url)
    fake.script("/models/m", Reply(400, {"code": 400, "type": "InvalidInput", "message": "no InvalidKeyException here"}))
    fake.script("/token", Reply(500, {"message": "must not be called"}))
    with Client(home=home, retries=0) as client:
        with pytest.raises(BadRequest):
            client.describe("m")
    with httpx.Client(trust_env=False) as http:
        assert management.mgmt_call(http, server_home.load_info(home), "GET", "/models/m").status_code == 400
    assert fake.calls("/token") == []


def test_client_and_the_snapshot_list_models_through_the_same_pages(fake, tmp_path):
    """Three pages of GET /models: both callers follow nextPageToken and get every name, in the server's order."""
    from aiaas_torch.serving import home as server_home, management

    pages = {None: (["a", "b"], "p2"), "p2": (["c"], "p3"), "p3": (["d"], None)}

    def listing(record):
        names, nxt = pages[record["query"].get("next_page_token", [None])[0]]
        return Reply(200, {"models": [{"modelName": n} for n in names], **({"nextPageToken": nxt} if nxt else {})})

    fake.script("/models", listing)
    for n in "abcd":
        fake.script(f"/models/{n}/all", Reply(200, [{"modelVersion": "1.0", "minWorkers": 1, "workers": []}]))
    home = write_home(tmp_path, fake.url)
    with Client(home=home) as client:
        assert client.models() == ["a", "b", "c", "d"]
    by_client = [c["query"] for c in fake.calls("/models")]
    fake.requests.clear()
    with httpx.Client(trust_env=False) as http:
        assert list(management.models_snapshot(http, server_home.load_info(home))) == ["a", "b", "c", "d"]
    assert by_client == [c["query"] for c in fake.calls("/models")] == [
        {"limit": ["100"]}, {"limit": ["100"], "next_page_token": ["p2"]}, {"limit": ["100"], "next_page_token": ["p3"]}]


def test_every_http_client_of_the_library_comes_from_the_one_factory():
    """No module builds its own httpx.Client with a hard-coded timeout: serving/httpclient.py is the one place."""
    import ast

    def builds_a_client(path: Path) -> bool:  # a call httpx.Client(...) / httpx.AsyncClient(...) in code, not in a docstring
        return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("Client", "AsyncClient")
                   and isinstance(n.func.value, ast.Name) and n.func.value.id == "httpx" for n in ast.walk(ast.parse(path.read_text())))

    root = Path(__file__).resolve().parents[1] / "aiaas_torch"
    builders = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if builds_a_client(p))
    assert builders == ["serving/httpclient.py"]
    assert not builds_a_client(root / "serving" / "tokens.py")  # its docstring shows one for the openai SDK: not a call


def test_the_clients_timeouts_are_the_named_ones(fake):
    """A prediction waits 30 s by default and connects within 5 s; a shorter wait also bounds the connect."""
    with Client(inference_url=fake.url) as client:
        assert client.timeout == httpx.Timeout(30.0, connect=5.0)
    with Client(inference_url=fake.url, request_timeout=2.0) as client:
        assert client.timeout == httpx.Timeout(2.0, connect=2.0)
