"""The SGD trainer: the origin example, the least-squares anchor, the loss, metrics, determinism, early stopping,
LR schedules, checkpoint/resume and config validation."""

from __future__ import annotations

import functools
import importlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from aiaas_torch import data
from aiaas_torch.models import fold_preprocessing
from aiaas_torch.train import TrainConfig, evaluate, load_checkpoint, loss_fn, train

train_mod = importlib.import_module("aiaas_torch.train")  # the module; `aiaas_torch.train` is the function

SEEDS = range(20)
X_ORIGIN = np.array([1, 2, 3, 4, 5], np.float32)


def _origin_ok(w: float, b: float, pred6: float) -> bool:
    """The origin example's success test: weight and bias in raw units, and the answer for x = 6."""
    return abs(w - 2) <= 0.01 and abs(b) <= 0.05 and abs(pred6 - 12) <= 0.05


@functools.cache
def _origin_fit(seed: int) -> tuple[float, float, float]:
    """Return (weight, bias, prediction for x=6) in raw units after training the origin example with `seed`."""
    ds = data.from_arrays(X_ORIGIN.reshape(-1, 1), 2 * X_ORIGIN, ["x"])
    res = train(ds, TrainConfig(model="linear", lr=0.01, epochs=1000, val_fraction=0.0, seed=seed, progress=False))
    folded = fold_preprocessing(res.model)
    with torch.no_grad():
        pred = float(folded(torch.tensor([[6.0]]))[0, 0])
    return float(folded[0].weight.detach()), float(folded[0].bias.detach()), pred


@functools.cache
def _unscaled_fit(seed: int) -> tuple[float, float, float]:
    """The same training (init, J, full-batch SGD lr 0.01, 1000 epochs) on a plain nn.Linear without scaling."""
    X = torch.from_numpy(X_ORIGIN).reshape(-1, 1)
    y = 2 * torch.from_numpy(X_ORIGIN)
    torch.manual_seed(seed)
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    J = loss_fn("regression")
    for _ in range(1000):
        opt.zero_grad()
        J(model(X), y).backward()
        opt.step()
    with torch.no_grad():
        return float(model.weight), float(model.bias), float(model(torch.tensor([[6.0]]))[0, 0])


# --- the origin example ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_origin_example_learns_y_equals_2x(seed):
    w, b, pred = _origin_fit(seed)
    assert abs(w - 2) <= 0.01, w
    assert abs(b) <= 0.05, b
    assert abs(pred - 12) <= 0.05, pred


@pytest.mark.slow
def test_scaling_layer_is_what_makes_the_origin_example_converge():
    scaled = sum(_origin_ok(*_origin_fit(s)) for s in SEEDS)
    unscaled = sum(_origin_ok(*_unscaled_fit(s)) for s in SEEDS)
    assert scaled == 20
    assert unscaled < 20, "without the scaling layer every seed converged too: the comparison shows nothing"


def test_origin_result_records_the_run(origin_result):
    assert origin_result.epochs_run == 1000 and len(origin_result.history) == 1000
    assert not origin_result.stopped_early
    assert "validation" not in origin_result.metrics
    losses = [h["train_loss"] for h in origin_result.history]
    assert losses[-1] < 1e-4 * losses[0]
    assert origin_result.metrics["train"]["J"] < 1e-4
    assert origin_result.data["rows"] == 5 and origin_result.data["validation_rows"] == 0


# --- correctness anchor: SGD against closed-form least squares ---------------------------------------------


def _linear_data(n=20_000, d=10, seed=123):
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-2, 3, d)  # features from 0.01 to 1000 in spread, with offsets
    loc = rng.normal(0, 50, d)
    X = (rng.normal(size=(n, d)) * scale + loc).astype(np.float32)
    w = rng.normal(size=d) / scale * 3
    y = X.astype(np.float64) @ w + 7.0 + rng.normal(0, 0.5, n)
    return data.from_arrays(X, y.astype(np.float32))


@pytest.mark.parametrize("seed", [0, 1])
def test_sgd_matches_least_squares_on_validation(seed):
    ds = _linear_data()
    cfg = TrainConfig(
        model="linear", batch_size=256, lr=0.05, momentum=0.9, epochs=20, lr_schedule="cosine", seed=seed, progress=False
    )
    res = train(ds, cfg)
    tr, va = data.split(ds, cfg.val_fraction, seed)

    def design(d):
        X = torch.from_numpy(d.X).double()
        return torch.cat([X, torch.ones(len(d), 1, dtype=torch.float64)], 1)  # intercept column

    sol = torch.linalg.lstsq(design(tr), torch.from_numpy(tr.y).double()[:, None]).solution
    mse_ls = float(((design(va) @ sol)[:, 0] - torch.from_numpy(va.y).double()).pow(2).mean())
    mse_sgd = res.metrics["validation"]["mse"]
    assert abs(mse_sgd / mse_ls - 1) < 0.01, (mse_sgd, mse_ls)
    assert mse_ls == pytest.approx(0.25, rel=0.1)  # the noise floor: lstsq itself is right


# --- loss and metrics --------------------------------------------------------------------------------------


def test_regression_loss_is_half_mean_squared_error():
    out = torch.tensor([[1.0], [2.0], [4.0], [-1.0]])
    y = torch.tensor([0.0, 2.0, 1.0, 1.0])
    m = 4
    by_hand = sum((h - t) ** 2 for h, t in [(1, 0), (2, 2), (4, 1), (-1, 1)]) / (2 * m)
    assert float(loss_fn("regression")(out, y)) == pytest.approx(by_hand, rel=1e-7)


def test_classification_loss_is_cross_entropy():
    out = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    def nll(row, k):
        return -math.log(math.exp(row[k]) / sum(math.exp(v) for v in row))
    by_hand = (nll([2.0, 0.0, -1.0], 0) + nll([0.0, 1.0, 0.0], 2)) / 2
    assert float(loss_fn("classification")(out, y)) == pytest.approx(by_hand, rel=1e-6)


def test_regression_metrics_by_hand():
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.bias.fill_(1.0)
    X = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
    y = np.array([1.0, 2.0, 6.0, 7.0], np.float32)  # predictions 1, 3, 5, 7: errors 0, 1, -1, 0
    m = evaluate(model, X, y, "regression")
    assert m["mse"] == pytest.approx(0.5)
    assert m["J"] == pytest.approx(0.25)
    assert m["rmse"] == pytest.approx(math.sqrt(0.5))
    assert m["mae"] == pytest.approx(0.5)
    var = np.mean((y - y.mean()) ** 2)
    assert m["r2"] == pytest.approx(1 - 0.5 / var)


def test_classification_metrics_by_hand():
    class Fixed(nn.Module):
        def forward(self, x):
            return x  # the features are the logits

    logits = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0]], np.float32)
    y = np.array([0, 1, 1])
    m = evaluate(Fixed(), logits, y, "classification")
    assert m["accuracy"] == pytest.approx(2 / 3)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log(p[np.arange(3), y])), rel=1e-6)


def _blobs(n=600, seed=0):
    """Three well-separated classes with string labels."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 5.0], [6.0, 0.0, 0.0], [0.0, 6.0, -5.0]]) * 3 + 100  # raw units with an offset
    k = rng.integers(0, 3, n)
    X = centers[k] + rng.normal(size=(n, 3))
    return data.from_arrays(X, np.array(["a", "b", "c"])[k])


@pytest.mark.parametrize("model", ["logistic", "mlp"])
def test_classifiers_reach_high_accuracy_on_separable_data(model):
    ds = _blobs()
    cfg = TrainConfig(model=model, hidden=(16,), batch_size=32, lr=0.1, momentum=0.9, epochs=30, seed=0, progress=False)
    res = train(ds, cfg)
    assert res.schema.classes == ["a", "b", "c"]
    assert res.spec.n_outputs == 3
    val = res.metrics["validation"]
    assert val["accuracy"] >= 0.98
    assert val["log_loss"] < 0.2
    assert set(res.metrics["train"]) == {"cross_entropy", "log_loss", "accuracy"}


def test_model_kind_must_match_the_task():
    with pytest.raises(ValueError, match="model: 'linear' is for regression"):
        train(_blobs(60), TrainConfig(model="linear", epochs=1, progress=False))
    with pytest.raises(ValueError, match="model: 'logistic' needs a classification"):
        train(_linear_data(100), TrainConfig(model="logistic", epochs=1, progress=False))


# --- determinism, early stopping, schedules ----------------------------------------------------------------


def _weights(model) -> list:
    return list(model.state_dict().values())


def _tame(n=400, d=4, seed=0):
    """A small regression with targets of order 1 (the MLP tests' data)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * 3 + 10
    return data.from_arrays(X, np.sin(X[:, 0]) + 0.5 * X[:, 1] - X[:, 2] * 0.1 + rng.normal(0, 0.05, n))


def test_same_seed_same_data_gives_bit_identical_weights():
    ds = _tame(600)
    cfg = TrainConfig(model="mlp", hidden=(16, 8), batch_size=32, lr=0.01, momentum=0.9, epochs=5, seed=11, progress=False)
    a, b = train(ds, cfg), train(ds, cfg)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a.model), _weights(b.model)))
    assert a.history == b.history
    c = train(ds, TrainConfig(**{**cfg.to_dict(), "hidden": (16, 8), "seed": 12}))
    assert not torch.equal(_weights(a.model)[2], _weights(c.model)[2])  # the first Linear's weight


def _noise_data():
    """Pure-noise targets and many features on few rows: validation loss soon rises as the model overfits."""
    rng = np.random.default_rng(0)
    return data.from_arrays(rng.normal(size=(60, 20)), rng.normal(size=60))


def test_early_stopping_stops_and_restores_the_best_weights():
    ds = _noise_data()
    cfg = TrainConfig(model="linear", lr=0.1, epochs=2000, val_fraction=0.5, patience=10, seed=0, progress=False)
    res = train(ds, cfg)
    assert res.stopped_early
    assert res.epochs_run < cfg.epochs
    assert res.epochs_run == res.best_epoch + cfg.patience
    val_losses = [h["val_loss"] for h in res.history]
    assert val_losses[res.best_epoch - 1] == min(val_losses)
    assert val_losses[-1] > min(val_losses)  # the last weights were worse: restoring matters
    assert res.metrics["validation"]["J"] == pytest.approx(min(val_losses), rel=1e-5)
    # the restored weights are exactly those a run stopped at best_epoch ends with
    ref = train(ds, TrainConfig(**{**cfg.to_dict(), "hidden": (), "epochs": res.best_epoch, "patience": None}))
    assert all(torch.equal(x, y) for x, y in zip(_weights(res.model), _weights(ref.model)))


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("cosine", lambda e, T: 0.1 * (1 + math.cos(math.pi * e / T)) / 2),
        ("step", lambda e, T: 0.1 * 0.1 ** (e // 3)),
    ],
)
def test_lr_schedules_follow_their_curve(schedule, expected, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(
        train_mod, "save_checkpoint", lambda state, path: seen.append((state["epoch"], state["optimizer"]["param_groups"][0]["lr"]))
    )
    T = 9
    cfg = TrainConfig(model="linear", lr=0.1, epochs=T, lr_schedule=schedule, checkpoint_every=1, seed=0, progress=False)
    res = train(_noise_data(), cfg, checkpoint_path=tmp_path / "ck.pt")
    per_epoch = {e: lr for e, lr in seen}
    assert sorted(per_epoch) == list(range(1, T + 1))
    for e in range(1, T + 1):
        assert per_epoch[e] == pytest.approx(expected(e, T), abs=1e-12), e
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


# --- checkpoint and resume ---------------------------------------------------------------------------------


class SimulatedCrash(Exception):
    """Stands for the process dying right after a checkpoint was written."""


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(model="mlp", hidden=(8,), batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-4, epochs=12,
                    lr_schedule="cosine", checkpoint_every=4, seed=3, progress=False),
        TrainConfig(model="linear", batch_size=8, lr=0.05, epochs=12, lr_schedule="step", patience=50,
                    checkpoint_every=4, seed=4, progress=False),
    ],
    ids=["mlp-cosine-momentum", "linear-step-patience"],
)
def test_resume_after_interruption_equals_an_uninterrupted_run(cfg, tmp_path, monkeypatch):
    ds = _tame(200, 3)
    full = train(ds, cfg, checkpoint_path=tmp_path / "full.pt")

    ck = tmp_path / "interrupted.pt"
    real_save = train_mod.save_checkpoint

    def save_then_crash_at_epoch_8(state, path):
        real_save(state, path)
        if state["epoch"] == 8 and not state["done"]:
            raise SimulatedCrash

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_crash_at_epoch_8)
    with pytest.raises(SimulatedCrash):
        train(ds, cfg, checkpoint_path=ck)
    monkeypatch.undo()
    state = load_checkpoint(ck)
    assert state["epoch"] == 8 and not state["done"] and len(state["history"]) == 8

    resumed = train(ds, cfg, checkpoint_path=ck, resume=True)
    assert all(torch.equal(x, y) for x, y in zip(_weights(full.model), _weights(resumed.model)))
    assert resumed.history == full.history
    assert resumed.epochs_run == 12
    assert load_checkpoint(ck)["done"]


def test_resume_refuses_other_settings_or_a_missing_checkpoint(tmp_path):
    ds = _linear_data(200, 3)
    cfg = TrainConfig(model="linear", lr=0.05, epochs=3, seed=0, progress=False)
    train(ds, cfg, checkpoint_path=tmp_path / "ck.pt")
    with pytest.raises(ValueError, match="other settings or other data"):
        train(ds, TrainConfig(model="linear", lr=0.01, epochs=3, seed=0, progress=False), tmp_path / "ck.pt", resume=True)
    with pytest.raises(ValueError, match="other settings or other data"):
        train(_linear_data(200, 3, seed=5), cfg, tmp_path / "ck.pt", resume=True)
    with pytest.raises(ValueError, match="resume: no checkpoint"):
        train(ds, cfg, tmp_path / "absent.pt", resume=True)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable aiaas checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


# --- config validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", "tree"),
        ("epochs", 0),
        ("epochs", 2.5),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("momentum", -0.1),
        ("weight_decay", float("inf")),
        ("seed", -1),
        ("seed", True),
        ("patience", 0),
        ("lr_schedule", "exp"),
        ("hidden", (8, 0)),
        ("checkpoint_every", -1),
        ("val_fraction", 1.0),
        ("val_fraction", -0.2),
    ],
)
def test_config_validate_names_the_bad_field(field, value):
    cfg = TrainConfig(**{"model": "mlp", field: value})
    with pytest.raises(ValueError, match=rf"^{field}: "):
        cfg.validate()


def test_config_round_trips_and_defaults_are_automatic():
    cfg = TrainConfig()  # lr, batch size, momentum and the stop chosen by the solver (conditioning.py); at most 1000 epochs
    assert (cfg.model, cfg.lr, cfg.epochs, cfg.batch_size, cfg.momentum, cfg.tol) == ("linear", None, 1000, None, None, None)
    assert cfg.validate() is cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_all_constant_features_are_refused_by_the_python_api():
    with pytest.warns(UserWarning, match="constant feature"):
        ds = data.from_arrays(np.full((10, 2), 3.0), np.arange(10.0), ["a", "b"])
    with pytest.raises(ValueError, match="every feature column is constant"):
        train(ds, TrainConfig(epochs=2, progress=False))


def test_default_least_squares_stops_on_the_exact_gap_in_few_epochs():
    """Whitened least squares, full batch: one step at the rate 1/L lands on the optimum, and the next step's gradient
    shows it (the curvature is a known diagonal), so the run stops there rather than waiting two flat epochs."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 6)) * [1, 5, 0.2, 30, 2, 1] + [0, 100, -3, 1e3, 0, 7]  # scales and offsets
    y = X @ [1.0, -0.2, 4.0, 0.01, 0.5, -1.0] + rng.normal(0, 0.3, 3000)
    ds = data.from_arrays(X, y)
    result = train(ds, TrainConfig(progress=False))
    tr, va = data.split(ds, 0.2, 0)
    A = np.column_stack([tr.X.astype(np.float64), np.ones(len(tr))])
    coef, *_ = np.linalg.lstsq(A, tr.y.astype(np.float64), rcond=None)
    yv = va.y.astype(np.float64)
    r2_ls = 1 - np.mean((va.X.astype(np.float64) @ coef[:-1] + coef[-1] - yv) ** 2) / np.var(yv)
    assert result.metrics["validation"]["r2"] == pytest.approx(r2_ls, abs=1e-5)
    assert result.solver["stopped_on_tol"] and result.epochs_run <= 3, result.solver  # the J-change rule alone needs 4
    assert result.warnings == []


def test_the_solver_moments_keep_their_digits_under_a_large_offset():
    """One pass gives the mean and covariance the whitening needs: a column near 1e4 with unit spread must not lose its
    variance to cancellation (Σx² − n·mean² in float32 would)."""
    from aiaas_torch.conditioning import moments

    rng = np.random.default_rng(4)
    X = (rng.normal(size=(40000, 3)) * [1.0, 2.0, 0.0] + [1e4, -50.0, 3.0]).astype(np.float32)
    mean, cov = moments(X, chunk=4096)
    X64 = X.astype(np.float64)
    assert np.allclose(mean, X64.mean(0), rtol=1e-12, atol=1e-9)
    assert np.allclose(cov, np.cov(X64.T, bias=True), rtol=1e-9, atol=1e-9)
    assert cov[2, 2] == 0.0  # a constant column: exactly no variance (the scaling gives it std 1)
