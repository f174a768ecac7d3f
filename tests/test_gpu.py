"""CUDA serving and training.

The CPU half runs everywhere: `--device gpu` packaging and the handler's device choice (a pure function). The CUDA
half needs a CUDA device and is skipped, with that reason, on machines without one (CI has none): it trains on
CUDA, serves through TorchServe on the GPU and checks the answers against the CPU model.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import yaml

from aiaas_torch.archive import ServingConfig, package
from aiaas_torch.data import from_arrays
from aiaas_torch.export import export_run
from aiaas_torch.runs import load_run
from aiaas_torch.handlers import integrity
from aiaas_torch.handlers import programs
from aiaas_torch.train import TrainConfig, train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none")


def _data(n: int = 2000):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 8))
    return from_arrays(X, np.sin(X[:, 0]) + X[:, 1] * X[:, 2], [f"f{i}" for i in range(8)], target="y")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    result = train(_data(), TrainConfig(model="mlp", hidden=(32,), epochs=20, lr=0.05, batch_size=128, momentum=0.9, progress=False))
    return export_run(result, tmp_path_factory.mktemp("gpu") / "run", compile=False).run_dir


@pytest.mark.parametrize("device, expected", [("gpu", "gpu"), ("cpu", "cpu"), ("auto", None)])
def test_package_device_sets_device_type(cpu_run, tmp_path, device, expected):
    mar = package(cpu_run, "m", "1", tmp_path, device=device, serving=ServingConfig(workers=1)).path
    with zipfile.ZipFile(mar) as zf:
        cfg = yaml.safe_load(zf.read("model-config.yaml"))
        card = json.loads(zf.read("model.json"))
    assert cfg.get("deviceType") == expected  # unset for auto: TorchServe gives a worker a GPU exactly when there is one
    assert card["serving"]["device"] == device
    assert card["files"]["model_float.pt2"]["serves"].startswith("cuda")


def test_device_choice_for_every_branch(cpu_run):
    card = load_run(cpu_run).card
    flags = integrity.cpu_flags()

    def device(gpu_id, cuda):
        c = programs.choose(card, flags, torch.__version__, cuda, gpu_id)
        return c.device, c.ranges[0][2]

    assert device(0, True) == ("cuda:0", "model_float.pt2")
    assert device("1", True) == ("cuda:1", "model_float.pt2")
    assert device(0, False)[0] == "cpu"  # gpu_id but no CUDA in the worker
    assert device(None, True)[0] == "cpu"  # CUDA but TorchServe gave no GPU


@needs_cuda
def test_train_on_cuda_matches_cpu(tmp_path):
    ds = _data()
    cfg = dict(model="mlp", hidden=(32,), epochs=20, lr=0.05, batch_size=128, momentum=0.9, progress=False)
    cpu = train(ds, TrainConfig(**cfg, device="cpu"))
    gpu = train(ds, TrainConfig(**cfg, device="cuda"))
    X = torch.from_numpy(ds.X[:256])
    a, b = cpu.model(X), gpu.model(X)  # both models end on the CPU
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3), (a - b).abs().max()


@needs_cuda
@pytest.mark.serving
def test_served_on_gpu_matches_cpu(cpu_run, tmp_path):
    from aiaas_torch import serving as server
    from aiaas_torch.client import Client

    store = tmp_path / "store"
    mar = package(cpu_run, "m", "1", store, device="gpu", serving=ServingConfig(workers=1)).path
    home = tmp_path / "home"
    server.start_server(home, store, [f"m={mar.name}"], free_ports=True, ready_timeout=240)
    try:
        rows = _data(64).X.tolist()
        with Client(home=home) as c:
            served = c.predict("m", {"instances": rows})["predictions"]
        assert "on cuda:" in (home / "logs" / "model_log.log").read_text()
        local = load_run(cpu_run, program="float").predict({"instances": rows})["predictions"]
        assert np.allclose(served, local, rtol=1e-4, atol=1e-4)
    finally:
        server.stop_server(home)
