"""The Open Inference gateway in front of an imported model (a tensor card: named inputs of several dtypes), and
what it exposes and to whom it sends a token: only the allow-listed Open Inference / TF Serving routes, no KServe
model-repository routes, no token before the process on its port proves it is the gateway just started, no
signing key in its environment. One TorchServe (module scope) started as `aiaas serve start --oip` starts it,
with $AIAAS_SIGNING_KEY set (its archive signed with that key)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as th

from aiaas_torch import serving as server
from aiaas_torch.archive import ServingConfig, package
from aiaas_torch.importer import import_model

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
        server.start(home, store, [f"twice={mar}"], free_ports=True, ready_timeout=180, oip=True)
    try:
        yield Guarded(home, store, mar)
    finally:
        server.stop(home)


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
