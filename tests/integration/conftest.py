"""Session fixtures for the integration tests: real run directories, real .mar archives, one real TorchServe.

The server is started once per test session on 127.0.0.1 with ports picked free at start (so the suite can run
beside a TorchServe that is already up) and stopped at the end. Where the `oip` extra is installed it is started
as `aiaas serve start --oip` starts it, with its Open Inference gateway, and stopped as `aiaas serve stop` stops it;
the stop is checked to leave neither process nor the gateway's port behind.
"""

from __future__ import annotations

import importlib.util
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from aiaas_torch import serving as server
from aiaas_torch.archive import ServingConfig, package
from aiaas_torch.cli import main
from aiaas_torch.client import Client
from aiaas_torch.data import from_arrays, load_csv
from aiaas_torch.export import export_run
from aiaas_torch.importer import import_model
from aiaas_torch.quantize import QuantConfig
from aiaas_torch.select import SelectConfig, select
from aiaas_torch.train import TrainConfig, train


@dataclass
class Served:
    """What the integration tests get: run directories, the store, archives and the running server."""

    origin: Path  # y = 2x, compiled package (the session's origin_run)
    origin_v2: Path  # y = 3x, float program only (exercises the fallback path)
    classes: Path  # 3 classes, 4 features, logistic
    mlp: Path  # MLP 100→512→512→1, int8 forced, compiled (the session's mlp_run), served with batchSize 1
    selected: Path  # chosen by model selection (its card carries the leaderboard), float program only
    penguins: Path  # examples/penguins_like.csv: blanks imputed, two text columns one-hot encoded, float program
    store: Path  # archives also holds the text models cls-1.0, emb-1.0 (tests/integration/test_text_serving.py) and the
    # imported models digits-1.0, enc-1.0 (tests/integration/test_byom_serving.py)
    archives: dict
    home: Path
    info: server.ServerInfo


def _linear_run(root: Path, name: str, slope: float, compile: bool) -> Path:
    """Return a run directory of y = slope·x trained on x = 1..5."""
    x = np.arange(1, 6, dtype=np.float64)
    ds = from_arrays(x.reshape(-1, 1), slope * x, ["x"], target="y")
    result = train(ds, TrainConfig(val_fraction=0.0, progress=False))
    return export_run(result, root / name, QuantConfig("int8"), compile=compile).run_dir


def _classes_run(root: Path) -> Path:
    """Return a run directory of a 3-class logistic model on 4 generated features."""
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0, 0, 0], [4, 4, 0, 0], [0, 4, 4, 4]], dtype=np.float64)
    labels = rng.integers(0, 3, 600)
    X = centers[labels] + rng.normal(0, 0.7, (600, 4))
    names = np.array(["setosa", "versicolor", "virginica"])[labels]
    ds = from_arrays(X, names, ["a", "b", "c", "d"], target="species")
    result = train(ds, TrainConfig(model="logistic", epochs=200, lr=0.5, batch_size=64, progress=False))
    return export_run(result, root / "classes", QuantConfig("none"), compile=False).run_dir


def _selected_run(root: Path) -> Path:
    """Return the run directory that model selection wrote for a small 2-class data set (tiny grid, no compile)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 2))
    ds = from_arrays(X, np.where(X[:, 0] - X[:, 1] > 0, "up", "down"), ["a", "b"], target="trend")
    grid = [{"model": "baseline"}, {"model": "logistic", "lr": 0.05}, {"model": "logistic", "lr": 0.05, "weight_decay": 0.01}]
    result = select(ds, SelectConfig(cv=2, epochs=60, grid=grid, finalists=2, halving=False, compile="never", progress=False),
                    workdir=root)  # fmt: skip
    try:
        return result.save(root / "selected")
    finally:
        result.cleanup()


def _penguins_run(root: Path) -> Path:
    """Return a run directory of a logistic model on examples/penguins_like.csv (blanks, text columns)."""
    ds = load_csv(Path(__file__).parents[2] / "examples" / "penguins_like.csv", "species", impute="median")
    result = train(ds, TrainConfig(model="logistic", epochs=200, lr=0.1, progress=False))
    return export_run(result, root / "penguins", QuantConfig("none"), compile=False).run_dir


@dataclass
class ByomRuns:
    """The bring-your-own-model examples imported once: the digits CNN and the token-encoder twin, and their run directories."""

    digits: tuple  # (model, test images, test labels): the session's `digits`
    encoder: torch.nn.Module
    digits_run: Path
    enc_run: Path


@pytest.fixture(scope="session")
def byom_runs(tmp_path_factory, digits, byom) -> ByomRuns:
    """Return the imported digits CNN (labels 0-9) and token encoder (vocabulary 50, 8 tokens, 3 outputs), not compiled."""
    root = tmp_path_factory.mktemp("byom")
    model, Xte, yte = digits
    run = import_model(model, torch.from_numpy(Xte[:2]), root / "digits", calibration={"image": Xte},
                       labels=[str(d) for d in range(10)], compile="never").run_dir  # fmt: skip
    torch.manual_seed(0)
    enc = byom.TokenEncoder(vocab=50, d=32, heads=2, layers=1, ff=64, seq=8, classes=3).eval()
    toks = torch.randint(0, 50, (32, 8), generator=torch.Generator().manual_seed(0))
    enc_run = import_model(enc, toks[:2], root / "enc", calibration={"tokens": toks.numpy()}, compile="never").run_dir
    return ByomRuns(digits, enc, run, enc_run)


@pytest.fixture(scope="session")
def served(tmp_path_factory, origin_run, mlp_run, text_runs, byom_runs) -> Served:
    """Yield a running TorchServe serving y2x v1.0 and v2.0, a classifier, the int8 MLP, a selected model, the penguins
    model, two text models (cls: the BERT classifier, emb: the RoBERTa encoder) and two imported ones (digits, enc);
    stop it afterwards.

    One server for the session: each TorchServe start costs ~20 s of the suite's time on two cores."""
    root = tmp_path_factory.mktemp("served")
    origin = origin_run.run_dir  # compiled once per session (tests/conftest.py): an AOTInductor compile costs tens of seconds
    origin_v2 = _linear_run(root, "origin_v2", 3.0, compile=False)
    classes = _classes_run(root)
    selected = _selected_run(root)
    penguins = _penguins_run(root)
    store = root / "store"
    batching = ServingConfig(workers=1, batch_size=8, max_batch_delay_ms=20)
    archives = {
        "y2x-1.0": package(origin, "y2x", "1.0", store, serving=batching).path,
        "y2x-2.0": package(origin_v2, "y2x", "2.0", store, serving=ServingConfig(workers=1)).path,
        "classes-1.0": package(classes, "classes", "1.0", store, serving=ServingConfig(workers=1)).path,
        "selected-1.0": package(selected, "selected", "1.0", store, serving=ServingConfig(workers=1)).path,
        "mlp-1.0": package(mlp_run.run_dir, "mlp", "1.0", store, serving=ServingConfig(workers=1, batch_size=1, max_batch_delay_ms=0)).path,
        "penguins-1.0": package(penguins, "penguins", "1.0", store, serving=ServingConfig(workers=1)).path,
        "cls-1.0": package(text_runs["bert_cls"], "cls", "1.0", store, serving=ServingConfig(workers=1, batch_size=8, max_batch_delay_ms=50)).path,
        "emb-1.0": package(text_runs["roberta_emb"], "emb", "1.0", store, serving=ServingConfig(workers=1, batch_size=4, max_batch_delay_ms=5)).path,
        "digits-1.0": package(byom_runs.digits_run, "digits", "1.0", store, serving=ServingConfig(workers=1, batch_size=8, max_batch_delay_ms=50)).path,
        "enc-1.0": package(byom_runs.enc_run, "enc", "1.0", store, serving=ServingConfig(workers=1)).path,
    }
    home = root / "home"
    models = [f"y2x={archives['y2x-1.0'].name}", f"y2x={archives['y2x-2.0'].name}", f"classes={archives['classes-1.0'].name}",
              f"mlp={archives['mlp-1.0'].name}", f"selected={archives['selected-1.0'].name}",
              f"penguins={archives['penguins-1.0'].name}", f"cls={archives['cls-1.0'].name}", f"emb={archives['emb-1.0'].name}",
              f"digits={archives['digits-1.0'].name}", f"enc={archives['enc-1.0'].name}"]
    # kserve parses sys.argv when imported, so it is looked for, never imported, in the test process
    oip = importlib.util.find_spec("kserve") is not None
    # eleven workers start at once: on two busy cores (load 13) they took over 180 s to be READY, so the wait is longer
    info = server.start_server(home, store, models, free_ports=True, ready_timeout=600, oip=oip)
    try:
        yield Served(origin, origin_v2, classes, mlp_run.run_dir, selected, penguins, store, archives, home, info)
    finally:
        stopped = main(["serve", "stop", "--home", str(home)])
    assert stopped == 0
    for pid in (info.pid, info.gateway_pid):
        assert pid <= 0 or not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    if oip:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(info.gateway_url.rsplit(":", 1)[1])), timeout=5).close()


@pytest.fixture()
def client(served) -> Client:
    """Yield a Client for the session's server (URLs and tokens from its home)."""
    with Client(home=served.home, request_timeout=30) as c:
        yield c


@pytest.fixture()
def fp32_input():
    """Return a builder of tritonclient's FP32 InferInput [rows, width] (binary or JSON data) for the OIP tests."""
    import tritonclient.http as th

    def build(rows, binary: bool, name: str = "input"):
        t = th.InferInput(name, [len(rows), len(rows[0])], "FP32")
        t.set_data_from_numpy(np.array(rows, dtype=np.float32), binary_data=binary)
        return t

    return build
