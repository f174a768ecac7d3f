"""The Open Inference gateway (`aiaas serve start --oip`: kserve's ModelServer in front of TorchServe), started once
in front of the session's TorchServe and called with tritonclient and httpx, as third-party clients would."""

from __future__ import annotations

import importlib.util
import time

import httpx
import psutil
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from aiaas_torch import serving as server
from aiaas_torch.serving.pids import gateway_alive, inet_connections, stop_gateway

pytestmark = pytest.mark.serving
# kserve parses sys.argv when imported, so it is looked for, never imported, in the test process
pytestmark = [pytestmark, pytest.mark.skipif(importlib.util.find_spec("kserve") is None,
                                             reason="the gateway needs the `oip` extra (make install brings it)")]  # fmt: skip


@pytest.fixture(scope="module")
def gateway(served):
    """Yield the ServerInfo of the session's TorchServe with a gateway on a free port; stop the gateway afterwards."""
    info = server.start_gateway(served.home, port=0, timeout=90)
    try:
        yield info
    finally:
        stop_gateway(info, timeout=10)
    assert not gateway_alive(info)


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


def test_gateway_tf_serving_rest_and_model_status(gateway):
    h = {"Authorization": f"Bearer {server.read_keys(gateway.home)['inference']}"}
    with httpx.Client(base_url=gateway.gateway_url, headers=h, timeout=30, trust_env=False) as http:
        rows = http.post("/v1/models/y2x:predict", json={"instances": [[6.0], [7.0]]})
        cols = http.post("/v1/models/y2x:predict", json={"inputs": {"x": [6.0, 7.0]}})
        status = http.get("/v1/models/y2x")
    assert rows.status_code == 200 and rows.json()["predictions"] == pytest.approx([12.0, 14.0], rel=1e-3), rows.text
    assert cols.status_code == 200 and cols.json() == {"outputs": pytest.approx([12.0, 14.0], rel=1e-3)}, cols.text
    assert status.status_code == 200 and status.json() == {"name": "y2x", "ready": True}, status.text


def test_gateway_listens_on_loopback_only(gateway):
    listening = [c for c in inet_connections(psutil.Process(gateway.gateway_pid)) if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening), listening
