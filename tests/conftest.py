"""Shared session fixtures: the origin example and a 100→512→512→1 MLP, each trained once and exported once.

Compiling a model.pt2 takes seconds to tens of seconds here, so each run directory is built once per session.
Tests that change a run directory work on a copy.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

# the package re-exports functions named like some modules (`train`, `quantize`): import the modules by name
data = importlib.import_module("aiaas_torch.data")
export = importlib.import_module("aiaas_torch.export")
QuantConfig = importlib.import_module("aiaas_torch.quantize").QuantConfig
train = importlib.import_module("aiaas_torch.train")


def make_nonlinear(n: int = 3000, d: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (X, y) of a nonlinear regression on d standard-normal features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = 2 * np.sin(X[:, 0]) + X[:, 1] * X[:, 2] + np.tanh(X[:, 3:10].sum(1)) + 0.3 * X[:, 10:20].sum(1)
    y = y + rng.normal(0, 0.1, n)
    return X, y.astype(np.float32)


@pytest.fixture(scope="session")
def origin_csv(tmp_path_factory) -> Path:
    """The origin example as a CSV file: x = 1..5, y = 2x."""
    p = tmp_path_factory.mktemp("origin_data") / "origin.csv"
    p.write_text("x,y\n" + "".join(f"{x},{2 * x}\n" for x in range(1, 6)))
    return p


@pytest.fixture(scope="session")
def origin_result(origin_csv) -> train.TrainResult:
    """The origin model: linear, full-batch SGD, lr 0.01, 1000 epochs, no validation split."""
    ds = data.load_csv(origin_csv, target="y")
    # the origin's own settings, given (the default solver would choose its rate and stop on convergence: issue 25)
    return train.train(ds, train.TrainConfig(model="linear", lr=0.01, epochs=1000, val_fraction=0.0, seed=0, progress=False))


@pytest.fixture(scope="session")
def origin_run(origin_result, tmp_path_factory) -> export.ExportResult:
    """The origin model exported (default config: int8 leaves its 1→1 layer in float), compiled (forced) once."""
    return export.export_run(origin_result, tmp_path_factory.mktemp("runs") / "origin", compile=True)


@pytest.fixture(scope="session")
def mlp_dataset() -> data.Dataset:
    """3000 rows × 100 features of a nonlinear regression."""
    return data.from_arrays(*make_nonlinear())


@pytest.fixture(scope="session")
def mlp_result(mlp_dataset) -> train.TrainResult:
    """An MLP 100→512→512→1, trained briefly with mini-batch SGD and momentum."""
    cfg = train.TrainConfig(
        model="mlp", hidden=(512, 512), batch_size=64, lr=0.01, momentum=0.9, epochs=10, seed=0, progress=False
    )
    return train.train(mlp_dataset, cfg)


@pytest.fixture(scope="session")
def mlp_run(mlp_result, tmp_path_factory) -> export.ExportResult:
    """The MLP exported with int8 forced (its two large layers quantized, whatever this host measures), compiled once."""
    return export.export_run(mlp_result, tmp_path_factory.mktemp("runs") / "mlp", QuantConfig("int8"), compile=True)


@pytest.fixture(scope="session")
def byom():
    """The examples/byom.py module (bring-your-own-model examples), imported from its file."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "byom.py"
    spec = importlib.util.spec_from_file_location("byom_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def digits(byom):
    """(model, test images, test labels): the digits CNN of examples/byom.py trained once with SGD (seconds)."""
    Xtr, ytr, Xte, yte = byom.load_digits()
    return byom.train_digits(Xtr, ytr), Xte, yte


def _json_close(a, b, ulps: int) -> bool:
    """Return True when two JSON values are equal, floats within `ulps` units in the last place."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= ulps * math.ulp(max(abs(a), abs(b)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_close(x, y, ulps) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_close(a[k], b[k], ulps) for k in a)
    return type(a) is type(b) and a == b


@pytest.fixture
def same_json():
    """Return a check that two JSON bodies (bytes) are byte-identical, or, where numpy's exp is not libm's on this CPU
    (its SIMD exp on some ISAs), equal but for probabilities a few ulps apart; labels and every other value exact."""

    def check(a: bytes, b: bytes, ulps: int = 4) -> bool:
        return a == b or _json_close(json.loads(a), json.loads(b), ulps)

    return check


class TwoInputs(torch.nn.Module):
    """A tiny model to import: float x [N, 2, 3] and integer ids [N, 4] → y [N, 2] and the ids' sum `total` [N] (int64)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 2)

    def forward(self, x, ids):
        return self.lin(x.reshape(x.shape[0], -1)) + ids.sum(1, keepdim=True).float(), ids.sum(1)


@dataclass
class Imported:
    two: torch.nn.Module  # TwoInputs
    two_run: Path  # its run directory, in a folder named `net-1.0` (not a model name)
    cls: torch.nn.Module  # Linear(3, 2) with labels "no", "yes"
    cls_run: Path


@pytest.fixture(scope="session")
def imported(tmp_path_factory) -> Imported:
    """Two tiny imported models (tensor cards, not compiled): two inputs and two outputs; a labelled classifier."""
    from aiaas_torch.importer import import_model

    root = tmp_path_factory.mktemp("imported")
    torch.manual_seed(0)
    two = TwoInputs().eval()
    x, ids = torch.randn(20, 2, 3), torch.randint(0, 5, (20, 4))
    two_run = import_model(two, (x[:2], ids[:2]), root / "net-1.0", output_names=["y", "total"],
                           calibration=(x.numpy(), ids.numpy()), compile="never").run_dir  # fmt: skip
    cls = torch.nn.Linear(3, 2).eval()
    z = torch.randn(20, 3)
    cls_run = import_model(cls, z[:2], root / "cls", calibration=z.numpy(), labels=["no", "yes"], compile="never").run_dir
    return Imported(two, two_run, cls, cls_run)


@pytest.fixture(scope="session")
def text_dirs(tmp_path_factory) -> dict:
    """Return {name: directory} of tiny Hugging Face text models built once (tests/textmodels.py)."""
    import textmodels

    return textmodels.build(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="session")
def text_runs(text_dirs, tmp_path_factory) -> dict:
    """Return {name: run directory} of the tiny text models, each imported once with `aiaas import DIR`."""
    from aiaas_torch.textimport import import_text

    root = tmp_path_factory.mktemp("text_runs")
    return {name: import_text(d, root / name).run_dir for name, d in text_dirs.items()}


@pytest.fixture(scope="session")
def decoder_dirs(tmp_path_factory):
    """Return {kind: (Hugging Face directory, transformers model)} of the tiny causal LMs of tests/decoder_models.py
    (seed 0, tokenizer and Llama-style template), each built once per session on first use; tests never change them."""
    import decoder_models

    return decoder_models.DecoderDirs(tmp_path_factory.mktemp("decoders"))


@pytest.fixture(scope="session")
def generation_runs(tmp_path_factory):
    """Return {(kind, seed): (run dir, transformers model, tokenizer, Hugging Face dir)} of tests/generation_runs.py,
    each imported (greedy gate included) once per session on first use; tests never change them."""
    import generation_runs

    return generation_runs.GenerationRuns(tmp_path_factory.mktemp("generation_runs"))
