"""The default fit reaches the optimum (issue 25): least squares for the linear model, the logistic optimum for the
logistic one, on collinear tables with one-hot columns and features on very different scales; the fit that stopped
short says so; the whitening folds back into one plain Linear."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from aiaas_torch import data
from aiaas_torch.models import fold_preprocessing
from aiaas_torch.train import TrainConfig, TrainingWarning, train

CITIES = np.array(["oslo", "rome", "lima", "kyiv"])


def _table(tmp_path, n: int, seed: int, classes: bool) -> data.Dataset:
    """Return a CSV-loaded table: a text column (4 categories: one-hot, rank-deficient with the intercept), numbers on
    scales 1e-3..1e4, and a column that is a near-linear combination of two others; the target is linear (plus noise),
    or a class drawn from a softmax of linear scores."""
    rng = np.random.default_rng(seed)
    city = rng.integers(0, 4, n)
    a = rng.normal(5000, 2000, n)  # big scale
    b = rng.normal(0.002, 0.001, n)  # tiny scale
    c = rng.normal(0, 1, n)
    e = rng.normal(0, 0.02, n)
    near = 3e-4 * a + 2.0 * c + e  # a near-linear combination of a and c (correlation 0.99995) ...
    effect = np.array([0.0, 4.0, -3.0, 1.5])[city]
    score = 0.002 * a + 900.0 * b - 1.5 * c + 0.7 * near + 80.0 * e + effect  # ... whose small remainder matters
    if classes:
        logits = np.stack([0.4 * score, -0.3 * score + 1.0, 0.2 * c - 0.5 * effect], 1)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        target = np.array(["lo", "mid", "hi"])[[rng.choice(3, p=row) for row in p]]
    else:
        target = score + rng.normal(0, 1.0, n)
    path = tmp_path / "t.csv"
    with path.open("w") as f:
        f.write("city,a,b,c,near,y\n")
        for row in zip(CITIES[city], a, b, c, near, target):
            f.write(",".join(str(v) for v in row) + "\n")
    return data.load_csv(path, "y")


def _design(ds: data.Dataset, train_X: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Return the test's own design matrix: one-hot of every category seen in training, the numbers, an intercept."""
    city = ds.schema.feature_names.index("city")
    seen = np.unique(train_X[:, city])
    onehot = (X[:, [city]] == seen[None, :]).astype(np.float64)
    nums = np.delete(X, city, axis=1).astype(np.float64)
    return np.hstack([onehot, nums, np.ones((len(X), 1))])


def _fit(ds, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(ds, TrainConfig(progress=False, **kw))
    return result, [str(w.message) for w in caught if issubclass(w.category, TrainingWarning)]


def test_default_linear_fit_reaches_least_squares_on_a_collinear_table(tmp_path):
    ds = _table(tmp_path, 6000, 0, classes=False)
    tr, va = data.split(ds, 0.2, 0)
    A = _design(ds, tr.X, tr.X)
    coef, *_ = np.linalg.lstsq(A, tr.y.astype(np.float64), rcond=None)
    pred = _design(ds, tr.X, va.X) @ coef
    yv = va.y.astype(np.float64)
    r2_ls = 1 - np.mean((pred - yv) ** 2) / np.var(yv)
    result, found = _fit(ds)
    r2 = result.metrics["validation"]["r2"]
    assert r2 >= r2_ls - 0.002, (r2, r2_ls)
    assert not any("stopped short" in w for w in found), found
    # the whitening folds into one plain Linear (behind the one-hot Preprocess): same predictions
    folded = fold_preprocessing(result.model)
    assert [type(m).__name__ for m in folded] == ["Preprocess", "Linear"]
    x = torch.from_numpy(va.X[:200])
    assert torch.allclose(folded(x), result.model(x), rtol=1e-4, atol=1e-3 * float(np.std(yv)))


def test_too_few_epochs_is_warned_with_the_gap_and_the_option(tmp_path):
    ds = _table(tmp_path, 6000, 0, classes=False)
    # one epoch of small noisy batches at the automatic rate with momentum: far from the optimum
    _, found = _fit(ds, epochs=1, batch_size=256, momentum=0.9)
    short = [w for w in found if "stopped short of the optimum" in w]
    assert short and "R² short by" in short[0] and "--epochs" in short[0], found
    # the classic fixed rate (--lr given) on the same table falls short too, and is told to drop --lr
    _, found = _fit(ds, lr=0.01, epochs=50)
    short = [w for w in found if "stopped short of the optimum" in w]
    assert short and "leave --lr unset" in short[0], found


def _logistic_optimum(Xtr: np.ndarray, ytr: np.ndarray, Xva: np.ndarray, yva: np.ndarray, k: int) -> float:
    """Return the validation log-loss of the unpenalized softmax optimum on the training rows (float64 LBFGS)."""
    mu, sd = Xtr.mean(0), Xtr.std(0)
    sd[sd == 0] = 1.0
    sd[-1] = 1.0
    mu[-1] = 0.0  # the intercept column stays 1
    Xt, Xv = torch.from_numpy((Xtr - mu) / sd), torch.from_numpy((Xva - mu) / sd)
    W = torch.zeros(Xt.shape[1], k, dtype=torch.float64, requires_grad=True)
    yt, yv = torch.from_numpy(ytr).long(), torch.from_numpy(yva).long()
    opt = torch.optim.LBFGS([W], lr=1, max_iter=2000, tolerance_grad=1e-12, tolerance_change=1e-15, history_size=50,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Xt @ W, yt)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(Xv @ W, yv))


def test_default_logistic_fit_reaches_the_optimum_on_a_collinear_table(tmp_path):
    ds = _table(tmp_path, 6000, 1, classes=True)
    tr, va = data.split(ds, 0.2, 0)
    ref = _logistic_optimum(_design(ds, tr.X, tr.X), tr.y, _design(ds, tr.X, va.X), va.y, len(ds.schema.classes))
    result, found = _fit(ds, model="logistic")
    got = result.metrics["validation"]["log_loss"]
    assert got <= ref + 0.002, (got, ref)
    assert not any("stopped short" in w for w in found), found


def test_the_origin_case_still_converges_by_default():
    x = np.arange(1, 6, dtype=np.float64)
    result = train(data.from_arrays(x.reshape(-1, 1), 2 * x, ["x"]), TrainConfig(val_fraction=0.0, progress=False))
    f = fold_preprocessing(result.model)
    assert float(f[0].weight[0, 0]) == pytest.approx(2.0, abs=1e-3)
    assert float(f[0].bias[0]) == pytest.approx(0.0, abs=1e-2)


def test_the_card_records_what_the_automatic_solver_chose(tmp_path, monkeypatch):
    """The settings say lr/momentum/batch_size None ("automatic"); the card's training.solver says what the run used.
    The run's own optimizer is watched (a spy on torch.optim.SGD) for the rate, momentum and the steps it took."""
    from aiaas_torch.card import read_card
    from aiaas_torch.export import export_run

    seen = []

    class SpySGD(torch.optim.SGD):
        def __init__(self, params, lr, momentum=0.0, **kw):
            super().__init__(params, lr=lr, momentum=momentum, **kw)
            seen.append({"opt": self, "lr": lr, "momentum": momentum, "steps": 0})

        def step(self, closure=None):
            seen[-1]["steps"] += 1
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "SGD", SpySGD)
    ds = _table(tmp_path, 12000, 1, classes=True)  # 9,600 training rows: more than a full batch, so batches of 4096
    result, _ = _fit(ds, model="logistic")
    (spy,) = seen
    card = read_card(export_run(result, tmp_path / "run", compile=False).run_dir)
    settings, solver = card["training"]["settings"], card["training"]["solver"]
    assert settings["lr"] is None and settings["momentum"] is None and settings["batch_size"] is None
    assert solver["lr"] > 0 and solver["lr"] == pytest.approx(spy["lr"], rel=1e-12)
    assert solver["momentum"] == spy["momentum"] == 0.9
    assert solver["lr_final"] == pytest.approx(spy["opt"].param_groups[0]["lr"], rel=1e-12) and solver["lr_final"] < solver["lr"]
    train_rows = card["data"]["train_rows"]
    assert solver["batch_size"] < train_rows
    assert spy["steps"] == solver["epochs_run"] * -(-train_rows // solver["batch_size"])  # every epoch's batches, stepped
    assert solver["epochs_run"] == card["training"]["epochs_run"] < settings["epochs"] and solver["stopped_on_tol"] is True
    assert solver["whitened"] is True and solver["tol"] > 0
