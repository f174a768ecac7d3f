"""The Open Inference gateway (`aiaas serve start --oip`: kserve's ModelServer in front of TorchServe), the one the
session's `start(..., oip=True)` started (tests/integration/conftest.py, which also checks that the stop leaves
nothing behind), called with tritonclient and httpx, as third-party clients would."""

from __future__ import annotations

import importlib.util
import time

import httpx
import psutil
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from aiaas_torch import serving as server
from aiaas_torch.serving.pids import inet_connections

pytestmark = pytest.mark.serving
# kserve parses sys.argv when imported, so it is looked for, never imported, in the test process
pytestmark = [pytestmark, pytest.mark.skipif(importlib.util.find_spec("kserve") is None,
                                             reason="the gateway needs the `oip` extra (make install brings it)")]  # fmt: skip


@pytest.fixture(scope="module")
def gateway(served):
    """Return the ServerInfo of the session's TorchServe, whose gateway start(oip=True) started on a free port."""
    return served.info


def _client(gateway):
    """Return (tritonclient on the gateway, a fresh headers dict with the bearer token)."""
    key = server.read_keys(gateway.home)["inference"]
    return th.InferenceServerClient(gateway.gateway_url.removeprefix("http://")), {"Authorization": f"Bearer {key}"}



def test_gateway_health_metadata_from_the_card_and_versions(gateway):
    c, h = _client(gateway)
    assert c.is_server_live(headers=dict(h)) and c.is_server_ready(headers=dict(h))
    assert c.is_model_ready("y2x", headers=dict(h)) and c.is_model_ready("y2x", "2.0", headers=dict(h))
    assert c.is_model_ready("y2x", "9.9", headers=dict(h)) is False and c.is_model_ready("nope", headers=dict(h)) is False
    meta = c.get_model_metadata("classes", headers=dict(h))
    assert meta["name"] == "classes" and meta["versions"] == ["1.0"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "predictions", "datatype": "BYTES", "shape": [-1]},
                               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]  # fmt: skip
    assert c.get_model_metadata("y2x", "2.0", headers=dict(h))["versions"] == ["2.0"]
    assert c.is_server_live() is False  # no token
    assert c.is_server_live(headers={"Authorization": "Bearer wrong"}) is False


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_gateway_infer_json_and_binary_on_default_and_version_paths(gateway, binary, fp32_input):
    c, h = _client(gateway)
    asked = None if binary else [th.InferRequestedOutput("y", binary_data=False)]  # JSON in, JSON out
    default = c.infer("y2x", [fp32_input([[6.0], [7.0]], binary)], outputs=asked, headers=dict(h))
    v2 = c.infer("y2x", [fp32_input([[6.0], [7.0]], binary)], model_version="2.0", outputs=asked, headers=dict(h))
    assert ("data" in v2.get_output("y")) is not binary
    assert default.as_numpy("y").tolist() == pytest.approx([12.0, 14.0], rel=1e-3)
    assert v2.as_numpy("y").tolist() == pytest.approx([18.0, 21.0], rel=1e-3)
    assert v2.get_response()["model_name"] == "y2x" and v2.get_response()["model_version"] == "2.0"


def test_gateway_passes_the_contract_error_through_as_a_400(gateway, fp32_input):
    c, h = _client(gateway)
    with pytest.raises(InferenceServerException) as e:
        c.infer("y2x", [fp32_input([[6.0, 1.0]], True)], headers=dict(h))
    assert e.value.status() == "400" and "inputs[0].shape" in e.value.message(), e.value


def test_gateway_ready_means_workers_ready_where_native_ready_does_not(gateway, served):
    c, h = _client(gateway)
    native = httpx.get(f"{gateway.inference_url}/v2/health/ready", headers=h, trust_env=False)
    server.scale(gateway, "y2x", 0, version="2.0")
    try:
        # TorchServe answers a scale-down before its status drops the stopped worker (seen under load): allow it a moment
        assert _within(10.0, lambda: c.is_model_ready("y2x", "2.0", headers=dict(h)) is False)
        assert c.is_server_ready(headers=dict(h)) is False
        assert c.is_model_ready("y2x", "1.0", headers=dict(h)) is True
        listed = _tf_status(gateway, "/v1/models/y2x")
        assert sorted(listed.json()["model_version_status"], key=lambda e: e["version"]) == [
            _entry("1.0", "AVAILABLE"), _entry("2.0", "UNAVAILABLE")], listed.text  # fmt: skip
        one = _tf_status(gateway, "/v1/models/y2x/versions/2.0")
        assert one.json() == {"model_version_status": [_entry("2.0", "UNAVAILABLE")]}, one.text
        still = httpx.get(f"{gateway.inference_url}/v2/health/ready", headers=h, trust_env=False)
        assert native.json() == still.json() == {"ready": True}  # TorchServe's own answer, whatever the workers
    finally:
        server.scale(gateway, "y2x", 1, version="2.0")
    assert _within(10.0, lambda: c.is_server_ready(headers=dict(h)) is True)


def _within(seconds: float, check) -> bool:
    """Return True as soon as check() is true, polling for up to `seconds`; False when it never was."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_gateway_tf_serving_rest_predict(gateway):
    h = {"Authorization": f"Bearer {server.read_keys(gateway.home)['inference']}"}
    with httpx.Client(base_url=gateway.gateway_url, headers=h, timeout=30, trust_env=False) as http:
        rows = http.post("/v1/models/y2x:predict", json={"instances": [[6.0], [7.0]]})
        cols = http.post("/v1/models/y2x:predict", json={"inputs": {"x": [6.0, 7.0]}})
    assert rows.status_code == 200 and rows.json()["predictions"] == pytest.approx([12.0, 14.0], rel=1e-3), rows.text
    assert cols.status_code == 200 and cols.json() == {"outputs": pytest.approx([12.0, 14.0], rel=1e-3)}, cols.text


def _tf_status(gateway, path: str, token: bool = True) -> httpx.Response:
    """Return the gateway's answer to GET PATH, with the inference token or without any."""
    h = {"Authorization": f"Bearer {server.read_keys(gateway.home)['inference']}"} if token else {}
    return httpx.get(gateway.gateway_url + path, headers=h, timeout=30, trust_env=False)


def _entry(version: str, state: str) -> dict:
    """Return one TF Serving model_version_status entry with an OK status."""
    return {"version": version, "state": state, "status": {"error_code": "OK", "error_message": ""}}


def test_gateway_answers_tf_serving_model_status_per_version(gateway):
    """Every version AVAILABLE while its workers are READY (UNAVAILABLE when scaled to zero: the readiness test)."""
    everything = _tf_status(gateway, "/v1/models/y2x")
    assert everything.status_code == 200, everything.text
    listed = sorted(everything.json()["model_version_status"], key=lambda e: e["version"])
    assert listed == [_entry("1.0", "AVAILABLE"), _entry("2.0", "AVAILABLE")]
    one = _tf_status(gateway, "/v1/models/y2x/versions/2.0")
    assert one.status_code == 200 and one.json() == {"model_version_status": [_entry("2.0", "AVAILABLE")]}, one.text


def test_gateway_tf_serving_status_of_unknown_models_and_versions_and_without_token(gateway):
    for path, message in [("/v1/models/nope", "Could not find any versions of model nope"),
                          ("/v1/models/y2x/versions/9.9", "Could not find version 9.9 of model y2x")]:  # fmt: skip
        r = _tf_status(gateway, path)
        assert r.status_code == 404 and r.json() == {"error": message}, r.text
    for path in ("/v1/models/y2x", "/v1/models/y2x/versions/1.0", "/v1/models/nope"):
        r = _tf_status(gateway, path, token=False)
        assert r.status_code == 401 and "token" in r.json()["error"], r.text


def test_start_oip_runs_the_gateway_after_torchserve_records_it_and_refuses_a_second(gateway, served):
    recorded = server.load_info(served.home)
    assert recorded.gateway_url == gateway.gateway_url and recorded.gateway_pid == gateway.gateway_pid > 0
    proc = psutil.Process(gateway.gateway_pid)
    assert "aiaas_torch.serving.gateway" in proc.cmdline() and str(served.home) in proc.cmdline()
    assert proc.create_time() >= psutil.Process(served.info.pid).create_time()  # started once TorchServe was
    port = int(gateway.gateway_url.rsplit(":", 1)[1])
    assert port not in served.info.listen_ports and port != 8090  # free_ports=True picked a free port for it too
    assert server.server_status(served.home)["gateway_url"] == gateway.gateway_url
    with pytest.raises(server.TorchServeError, match="gateway already runs"):
        server.start_gateway(served.home, port=0)


def test_gateway_listens_on_loopback_only(gateway):
    listening = [c for c in inet_connections(psutil.Process(gateway.gateway_pid)) if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening), listening
