"""The warnings a careful colleague would give about a trained model: in TrainResult.warnings, as TrainingWarning,
in the card, and on the CLI's stderr."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from aiaas_torch import data
from aiaas_torch.train import TrainConfig, TrainingWarning, train


def _blobs(n: int, seed: int = 0) -> data.Dataset:
    """Return 3 well separated balanced classes on 2 features."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    X = np.array([[0, 0], [6, 0], [0, 6]], dtype=np.float64)[labels] + rng.normal(0, 0.5, (n, 2))
    return data.from_arrays(X, labels, ["a", "b"], target="k")


def _train(ds, **kw) -> list[str]:
    cfg = dict(model="logistic", epochs=300, lr=0.5, progress=False)
    cfg.update(kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(ds, TrainConfig(**cfg))
    emitted = [str(w.message) for w in caught if issubclass(w.category, TrainingWarning)]
    assert emitted == result.warnings
    return result.warnings


def test_a_well_trained_model_gets_no_warning():
    assert _train(_blobs(300)) == []


def test_no_better_than_the_majority_class_is_warned():
    # one epoch at a tiny learning rate: the weights barely move from their random start
    found = _train(_blobs(300), epochs=1, lr=1e-6)
    assert any("no better than always answering the majority class" in w and "60 validation rows" in w for w in found), found


def test_no_better_than_the_mean_is_warned_for_regression():
    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (200, 3))
    ds = data.from_arrays(X, 100 + X[:, 0] + rng.normal(0, 1, 200), ["a", "b", "c"], target="y")
    found = _train(ds, model="linear", epochs=5, lr=1e-4)  # far from the mean of 100 after 5 tiny steps
    assert any("no better than predicting the training mean" in w for w in found), found


def test_fewer_than_30_validation_rows_suggests_cross_validation():
    found = _train(_blobs(60))  # 12 validation rows
    assert any(w.startswith("only 12 validation rows") and "--select --cv 5" in w for w in found), found
    assert not any("validation rows (fewer" in w for w in _train(_blobs(150)))  # 30 rows: enough


def test_loss_still_falling_steeply_at_the_last_epoch():
    found = _train(_blobs(300), epochs=20, lr=0.01)
    assert any("still falling at the last epoch" in w and "last 2 of 20 epochs" in w for w in found), found


def test_card_and_cli_carry_the_warnings(tmp_path):
    p = tmp_path / "d.csv"
    rows = ["a,k"] + [f"{i % 7},{i % 3}" for i in range(20)]  # 4 validation rows, nothing to learn
    p.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "aiaas_torch.cli", "train", str(p), "--target", "k", "--out", str(out),
                        "--epochs", "20", "--no-compile", "--quantize", "none"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    card = json.loads((out / "model.json").read_text())
    assert any(w.startswith("only 4 validation rows") for w in card["warnings"]), card["warnings"]
    for w in card["warnings"]:
        assert f"aiaas: warning: {w}" in r.stderr


def test_train_quietly_lists_the_warnings_without_touching_the_global_filters(monkeypatch):
    """Model selection trains folds in threads: a quiet fit must not swap the process-wide warning filters (as
    warnings.catch_warnings does), or threads leaving in another order than they entered leave them scrambled."""
    from aiaas_torch import candidates

    during = []
    real = candidates.train
    monkeypatch.setattr(candidates, "train", lambda ds, cfg, **kw: (during.append(list(warnings.filters)), real(ds, cfg, **kw))[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        result = candidates.train_quietly(_blobs(60), TrainConfig(model="logistic", epochs=50, lr=0.5, progress=False))
        after = list(warnings.filters)
    assert any("validation rows" in w for w in result.warnings), result.warnings  # 12 validation rows: warned ...
    assert not [w for w in caught if issubclass(w.category, TrainingWarning)]  # ... in the result, not emitted
    assert during == [before] and after == before  # no filter added around the fit
