"""The Open Inference gateway in front of an imported model (a tensor card: named inputs of several dtypes), and
what it exposes and to whom it sends a token: only the allow-listed Open Inference / TF Serving routes, no KServe
model-repository routes, no token before the process on its port proves it is the gateway just started, no
signing key in its environment. One TorchServe (module scope) started as `aiaas serve start --oip` starts it,
with $AIAAS_SIGNING_KEY set (its archive signed with that key)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as th

from aiaas_torch import serving as server
from aiaas_torch.archive import ServingConfig, package
from aiaas_torch.cli import main
from aiaas_torch.importer import import_model
from aiaas_torch.serving import control, gateway_guard
from aiaas_torch.serving.pids import stop_gateway
from aiaas_torch.serving.ports import free_ports

pytestmark = [pytest.mark.serving, pytest.mark.skipif(importlib.util.find_spec("kserve") is None,
                                                      reason="the gateway needs the `oip` extra (make install brings it)")]  # fmt: skip

SIGNING_KEY = "gateway-test-signing-key-0123456789"


class Twice(torch.nn.Module):
    """y = 2·x + n: an FP32 input and an INT64 input, one FP32 output."""

    def forward(self, x, n):
        return 2 * x + n.to(torch.float32)


@dataclass
class Guarded:
    home: Path
    store: Path
    mar: str


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Guarded:
    """Yield a TorchServe with its gateway serving the imported `twice` model, started with $AIAAS_SIGNING_KEY set."""
    root = tmp_path_factory.mktemp("guard")
    x = torch.arange(48, dtype=torch.float32).reshape(16, 3)
    n = torch.arange(48, dtype=torch.int64).reshape(16, 3)
    run = import_model(Twice(), (x[:2], n[:2]), root / "twice", input_names=["x", "n"], output_names=["y"],
                       calibration={"x": x.numpy(), "n": n.numpy()}, compile="never").run_dir  # fmt: skip
    store = root / "store"
    mar = package(run, "twice", "1.0", store, serving=ServingConfig(workers=1), sign_key=SIGNING_KEY).path.name
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIAAS_SIGNING_KEY", SIGNING_KEY)
        mp.setenv("SOME_SERVICE_API_TOKEN", "unrelated-secret-the-gateway-needs-not")
        server.start_server(home, store, [f"twice={mar}"], free_ports=True, ready_timeout=180, oip=True)
    try:
        yield Guarded(home, store, mar)
    finally:
        server.stop_server(home)


def _gateway(guarded) -> tuple[server.ServerInfo, dict]:
    """Return (the recorded ServerInfo, headers with the inference token)."""
    return server.load_info(guarded.home), {"Authorization": f"Bearer {server.read_keys(guarded.home)['inference']}"}


def _infer_twice(info, headers) -> list:
    """Return the gateway's answer y for x = [[1, 2, 3]], n = [[10, 20, 30]] through tritonclient."""
    c = th.InferenceServerClient(info.gateway_url.removeprefix("http://"))
    x, n = th.InferInput("x", [1, 3], "FP32"), th.InferInput("n", [1, 3], "INT64")
    x.set_data_from_numpy(np.array([[1, 2, 3]], np.float32))
    n.set_data_from_numpy(np.array([[10, 20, 30]], np.int64))
    return c.infer("twice", [x, n], headers=dict(headers)).as_numpy("y").tolist()


def test_gateway_metadata_and_infer_of_an_imported_model(guarded):
    info, h = _gateway(guarded)
    c = th.InferenceServerClient(info.gateway_url.removeprefix("http://"))
    meta = c.get_model_metadata("twice", headers=dict(h))
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]},
                              {"name": "n", "datatype": "INT64", "shape": [-1, 3]}], meta  # fmt: skip
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}], meta
    assert c.is_model_ready("twice", headers=dict(h))
    assert _infer_twice(info, h) == [[12.0, 24.0, 36.0]]


def test_gateway_environment_has_no_signing_key(guarded):
    info, _ = _gateway(guarded)
    environ = Path(f"/proc/{info.gateway_pid}/environ").read_bytes().split(b"\0")
    names = {e.split(b"=", 1)[0].decode() for e in environ if e}
    assert "PYTHONUNBUFFERED" in names  # it is the gateway's environment we read
    assert "AIAAS_SIGNING_KEY" not in names and SIGNING_KEY.encode() not in b"\0".join(environ)
    assert "SOME_SERVICE_API_TOKEN" not in names  # only what its Python needs goes in (config.gateway_env)


# What the gateway answers (README: Open Inference health, server metadata, model metadata and ready, infer, the
# /versions/V paths; TF Serving's status and predict) and its own identity probe: an explicit list.
ALLOWED = {
    "GET /aiaas/identity",
    "GET /v2", "GET /v2/health/live", "GET /v2/health/ready",
    "GET /v2/models/{model_name}", "GET /v2/models/{model_name}/versions/{model_version}",
    "GET /v2/models/{model_name}/ready", "GET /v2/models/{model_name}/versions/{model_version}/ready",
    "POST /v2/models/{model_name}/infer", "POST /v2/models/{model_name}/versions/{model_version}/infer",
    "GET /v1/models/{model_name}", "GET /v1/models/{model_name}/versions/{model_version}",
    "POST /v1/models/{model_name}:predict",
}  # fmt: skip
# What kserve 0.21 and FastAPI mount beside them, refused by the gateway: model repository, listings, explain, its
# own metrics, the OpenAPI schema. A kserve release that mounts more fails the test until someone looks.
REFUSED = {
    "POST /v2/repository/models/{model_name}/load", "POST /v2/repository/models/{model_name}/unload",
    "GET /v2/models", "GET /v1/models", "POST /v1/models/{model_name}:explain",
    "GET /", "GET /metrics", "GET /openapi.json", "HEAD /openapi.json",
}  # fmt: skip

# Builds the gateway's app as ModelServer.start does (without serving it) and prints every route registered on it,
# those of included routers too (FastAPI keeps those inside the router it includes).
_ROUTES_SCRIPT = """
import json, sys
from pathlib import Path
import fastapi
home, seen = sys.argv.pop(1), set()
def record(routes, prefix=""):
    for r in routes:
        if hasattr(r, "path"):
            seen.update(f"{m} {prefix}{r.path}" for m in (getattr(r, "methods", None) or ["*"]))
include = fastapi.FastAPI.include_router
def recording(self, router, *args, prefix="", **kwargs):
    record(router.routes, prefix)
    return include(self, router, *args, prefix=prefix, **kwargs)
fastapi.FastAPI.include_router = recording
from aiaas_torch.serving import gateway
import kserve.model_server as ms
server, _ = gateway.build_server(Path(home), 0)
ms.RESTServer(ms.FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, 0).create_application()
record(ms.app.router.routes)
print(json.dumps(sorted(seen)))
"""


def _concrete(route: str) -> tuple[str, str]:
    """Return (method, path) of a "METHOD /path/{param}" route with the served model's name and version filled in."""
    method, path = route.split(" ", 1)
    return method, path.replace("{model_name}", "twice").replace("{model_version}", "1.0")


def test_gateway_answers_only_allow_listed_routes(guarded):
    out = subprocess.run([sys.executable, "-c", _ROUTES_SCRIPT, str(guarded.home)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    registered = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert registered == ALLOWED | REFUSED, (sorted(registered - ALLOWED - REFUSED), sorted(ALLOWED | REFUSED - registered))
    assert gateway_guard.ROUTES == ALLOWED
    info, h = _gateway(guarded)
    with httpx.Client(base_url=info.gateway_url, headers=h, timeout=30, trust_env=False) as http:
        for route in sorted(REFUSED):
            r = http.request(*_concrete(route))
            assert r.status_code == 404, (route, r.status_code, r.text[:200])
            assert route.startswith("HEAD") or "not a route" in r.json()["error"], (route, r.text[:200])
        for route in sorted(ALLOWED):
            method, path = _concrete(route)
            if method == "GET" and path != "/aiaas/identity":
                assert http.get(path).status_code == 200, route


def test_repository_routes_are_gone_for_the_inference_token(guarded):
    """KServe's model repository answered the inference token: unload took the model away until a restart."""
    info, h = _gateway(guarded)
    with httpx.Client(base_url=info.gateway_url, headers=h, timeout=30, trust_env=False) as http:
        for path in ("/v2/repository/models/twice/unload", "/v2/repository/models/twice/load", "/v2/repository/index"):
            r = http.post(path)
            assert r.status_code in (401, 403, 404) and isinstance(r.json(), dict), (path, r.status_code, r.text)
        assert http.get("/v2/models/twice/ready").status_code == 200
    assert _infer_twice(info, h) == [[12.0, 24.0, 36.0]]


class Impostor:
    """A local HTTP server on a port that answers 200 {"ready": true} to everything and records every request's headers."""

    def __init__(self, port: int | None = None):
        self.requests: list[tuple[str, str, dict]] = []
        impostor = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                impostor.requests.append((self.command, self.path, dict(self.headers)))
                body = json.dumps({"ready": True, "live": True, "proof": "0" * 64}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def authorizations(self) -> list:
        """Return every Authorization header it received."""
        return [h[k] for _, _, h in self.requests for k in h if k.lower() == "authorization"]

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()


def test_start_refuses_a_gateway_port_held_by_another_process(guarded, tmp_path, capsys):
    impostor = Impostor()
    try:
        code = main(["serve", "start", "--home", str(tmp_path / "h"), "--model-store", str(guarded.store),
                     "--models", f"twice={guarded.mar}", "--free-ports", "--oip", "--oip-port", str(impostor.port),
                     "--ready-timeout", "120"])  # fmt: skip
        err = capsys.readouterr().err
    finally:
        impostor.close()
        server.stop_server(tmp_path / "h")
    assert code == 1 and f"port {impostor.port}" in err and "already in use" in err and "--oip-port" in err, err
    assert impostor.authorizations() == [] and impostor.requests == []
    assert server.load_info(tmp_path / "h") is None  # refused before anything started


def test_an_impostor_that_binds_after_the_check_gets_no_token(guarded, monkeypatch):
    """The port was free when checked; an impostor takes it before the gateway binds (injected): the start fails
    naming the port and the impostor never sees a token; a gateway started afterwards answers as before."""
    info, h = _gateway(guarded)
    stop_gateway(info, timeout=10.0)
    port = free_ports(1)[0]
    impostors = []
    checked = getattr(control, "check_port_free", None)

    def check_then_lose_the_race(*args, **kwargs):
        if checked is not None:
            checked(*args, **kwargs)
        impostors.append(Impostor(port))

    monkeypatch.setattr(control, "check_port_free", check_then_lose_the_race, raising=False)
    if checked is None:  # before the fix there was no check to race: the impostor simply holds the port
        impostors.append(Impostor(port))
    try:
        with pytest.raises(server.TorchServeError) as e:
            server.start_gateway(guarded.home, port=port, timeout=60)
        assert f"port {port}" in str(e.value) and "no token was sent" in str(e.value), e.value
    finally:
        for i in impostors:
            i.close()
    assert impostors and all(i.authorizations() == [] for i in impostors), [i.requests for i in impostors]
    monkeypatch.undo()
    info = server.start_gateway(guarded.home, port=0)
    assert _infer_twice(info, h) == [[12.0, 24.0, 36.0]]
