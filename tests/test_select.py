"""Model selection (aiaas_torch/select.py, `aiaas train --select`): folds, determinism, no leakage, the serving
budget, the card's leaderboard and the CLI. Small data, small grids, --compile never: compiling proves nothing here."""

from __future__ import annotations

import importlib
import json
import re

import numpy as np
import pytest
import torch

from aiaas_torch import card as card_mod
from aiaas_torch.cli import main
from aiaas_torch.data import from_arrays, split
from aiaas_torch.runs import load_run
from aiaas_torch.select import SelectConfig, folds, select

train_mod = importlib.import_module("aiaas_torch.train")  # the module (aiaas_torch.train is the function)

GRID = [
    {"model": "baseline"},
    {"model": "linear", "lr": 0.05, "weight_decay": 0.0},
    {"model": "linear", "lr": 0.05, "weight_decay": 0.01, "rotate": True},
    {"model": "mlp", "hidden": [16], "lr": 0.01, "weight_decay": 0.0},
]


def _quadratic(n=240, seed=0):
    """y = x0² + x1 (a linear model cannot fit x0²; an MLP can)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    y = X[:, 0] ** 2 + X[:, 1] + 0.05 * rng.normal(size=n)
    return from_arrays(X, y, ["a", "b", "c"], "y", task="regression")


def _cfg(**kw):
    base = dict(cv=3, epochs=150, grid=GRID, compile="never", progress=False)
    base.update(kw)
    return SelectConfig(**base)


def _param_count_timer(name, batch, fn, x, limit):
    """Seconds = 1 µs per parameter of the timed module: bigger models are slower, deterministically."""
    return 1e-6 * sum(p.numel() for p in fn.parameters())


def test_folds_partition_the_rows_and_spread_every_class():
    y = np.array([0] * 30 + [1] * 12 + [2] * 5)
    fs = folds(y, 5, seed=3, stratified=True)
    rows = np.concatenate(fs)
    assert sorted(rows.tolist()) == list(range(len(y)))  # every row validates exactly once
    for c in (0, 1, 2):
        per_fold = [int((y[f] == c).sum()) for f in fs]
        assert max(per_fold) - min(per_fold) <= 1, (c, per_fold)
    assert max(map(len, fs)) - min(map(len, fs)) <= 1


def test_same_data_twice_gives_the_same_ranking_and_choice(tmp_path):
    ds = _quadratic()
    a = select(ds, _cfg(finalists=1), workdir=tmp_path)
    b = select(ds, _cfg(finalists=1), workdir=tmp_path)
    key = lambda r: [(e["rank"], e["params"], e.get("mean"), e.get("std"), e.get("scores"), e["status"]) for e in r.leaderboard]
    assert key(a) == key(b)
    assert a.section["chosen"] == b.section["chosen"]
    assert a.test_metrics == b.test_metrics
    assert a.leaderboard[0]["params"]["model"] == "mlp"  # the only candidate that can fit x0²
    a.cleanup(), b.cleanup()


def test_folds_fitted_side_by_side_score_exactly_as_one_after_another(monkeypatch):
    """Folds train in threads; each fit's seed and initial weights must not depend on which thread got there first."""
    sel = importlib.import_module("aiaas_torch.select")
    ds = _quadratic(n=300)
    fs = folds(ds.y, 3, seed=0, stratified=False)
    runs = {}
    for workers in (1, 3):
        monkeypatch.setattr(sel, "fold_workers", lambda k, w=workers: w)
        runs[workers] = [sel.cross_validate(c, ds, fs, "r2", 40, 0)["scores"] for c in GRID]
    assert runs[1] == runs[3]
    assert len({s for scores in runs[1] for s in scores}) == len(GRID) * 3  # every fold of every candidate scored apart


def test_every_preprocessing_fit_sees_only_its_fold_training_rows(tmp_path, monkeypatch):
    """The leakage trap: each row carries a unique id in column `rowid`; a spy on the scaling fit records the ids it
    saw. A validation fold (or a test row) leaking into scaling shows up as an id that must not be there."""
    n = 150
    rng = np.random.default_rng(5)
    X = np.column_stack([rng.normal(size=(n, 2)), np.arange(n)]).astype(np.float32)
    ds = from_arrays(X, X[:, 0] - X[:, 1] + 0.01 * rng.normal(size=n), ["a", "b", "rowid"], "y", task="regression")
    seen = []
    real = train_mod.standardize_stats
    monkeypatch.setattr(train_mod, "standardize_stats", lambda Xf: (seen.append(set(Xf[:, 2].astype(int).tolist())), real(Xf))[1])
    cfg = _cfg(grid=[{"model": "linear", "lr": 0.05}], finalists=1, halving=False, epochs=20)
    select(ds, cfg, workdir=tmp_path).cleanup()
    train_ds, test_ds = split(ds, cfg.test_fraction, cfg.seed)
    train_ids = train_ds.X[:, 2].astype(int)
    test_ids = set(test_ds.X[:, 2].astype(int).tolist())
    val_sets = [set(train_ids[f].tolist()) for f in folds(train_ds.y, cfg.cv, cfg.seed, stratified=False)]
    assert len(seen) == cfg.cv + 1  # one fit per fold, then the refit of the finalist
    # exactly each fold's training rows, its validation rows never; folds fit side by side, so in any order
    fold_train = [sorted(set(train_ids.tolist()) - val) for val in val_sets]
    assert sorted(sorted(ids) for ids in seen[: cfg.cv]) == sorted(fold_train)
    assert seen[-1] == set(train_ids.tolist())  # the refit: the whole training split
    assert all(not (ids & test_ids) for ids in seen)  # the test split never reaches any fit


def _r2(pred: np.ndarray, y: np.ndarray) -> float:
    return float(1.0 - np.mean((pred - y) ** 2) / np.mean((y - y.mean()) ** 2))


def test_leakage_trap_cv_scores_the_fold_internal_scaling_not_the_leaked_one(tmp_path):
    """A scoring trap: feature b barely varies (std 0.001) except on the rows that become fold 0's validation rows,
    where it is ≈ 3. Scaled on its own training rows, fold 0 blows b up 1000× and the linear model answers its
    validation rows wildly; scaling that had seen the validation rows would tame b and score far better. select's
    CV scores must be the fold-internal ones, computed here with the test's own split, scaling and R²."""
    from aiaas_torch.train import TrainConfig, train

    n, k, seed, epochs = 300, 3, 0, 100
    n_test = int(round(n * 0.2))
    test_rows = np.random.default_rng(seed).permutation(n)[:n_test]  # the test split: split()'s first rows
    train_rows = np.random.default_rng(seed).permutation(n)[n_test:]
    fold_of = np.empty(n - n_test, dtype=int)  # folds of the training split, in its order: the permutation dealt out
    fold_of[np.random.default_rng(seed).permutation(n - n_test)] = np.arange(n - n_test) % k
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=n), 0.001 * rng.normal(size=n)
    loud = train_rows[fold_of == 0]
    b[loud] = 3.0 + rng.normal(size=len(loud))
    y = 2 * a + 0.1 * rng.normal(size=n)
    X = np.column_stack([a, b]).astype(np.float32)
    ds = from_arrays(X, y, ["a", "b"], "y", task="regression")
    cand = {"model": "linear", "lr": 0.05}
    r = select(ds, _cfg(grid=[cand], cv=k, epochs=epochs, halving=False, finalists=1, seed=seed), workdir=tmp_path)
    r.cleanup()
    assert not set(test_rows) & set(loud)

    def fold_score(j: int, leak: bool) -> float:
        Xtr, ytr = X[train_rows[fold_of != j]], y[train_rows[fold_of != j]]
        Xva, yva = X[train_rows[fold_of == j]], y[train_rows[fold_of == j]]
        fit_on = X[train_rows] if leak else Xtr  # leaked: the validation rows join the scaling fit
        mean, std = fit_on.mean(0, dtype=np.float64), fit_on.std(0, dtype=np.float64)
        z = lambda M: ((M - mean) / std).astype(np.float32)
        fold_ds = from_arrays(z(Xtr), ytr, ["a", "b"], "y", task="regression")
        cfg = TrainConfig(model="linear", lr=0.05, epochs=epochs, momentum=0.9, seed=seed, val_fraction=0.0, progress=False, scale=False)
        model = train(fold_ds, cfg).model
        with torch.no_grad():
            return _r2(model(torch.from_numpy(z(Xva)))[:, 0].double().numpy(), yva)

    honest = [fold_score(j, leak=False) for j in range(k)]
    leaked = [fold_score(j, leak=True) for j in range(k)]
    (entry,) = r.leaderboard
    assert entry["scores"] == pytest.approx(honest, rel=1e-3, abs=1e-4)
    assert entry["mean"] == pytest.approx(np.mean(honest), rel=1e-3)
    assert np.mean(leaked) > np.mean(honest) + 1.0  # the trap: leaking would have scored far better
    assert leaked[0] > 0.9 > honest[0]


def test_latency_budget_rules_out_the_better_but_slower_finalist(tmp_path):
    ds = _quadratic()
    free = select(ds, _cfg(), workdir=tmp_path, timer=_param_count_timer)
    assert free.leaderboard[0]["params"]["model"] == "mlp"
    mlp_us = free.leaderboard[0]["deployed"]["us_per_row_b1"]
    budget = select(ds, _cfg(max_latency_us=mlp_us - 1), workdir=tmp_path, timer=_param_count_timer)
    chosen = budget.section["chosen"]
    assert chosen["params"]["model"] != "mlp" and chosen["rank"] > 1
    (out,) = budget.section["ruled_out"]
    assert out["rank"] == 1 and out["params"]["model"] == "mlp" and "--max-latency-us" in out["why"]
    assert budget.best.spec.kind != "mlp"
    with pytest.raises(ValueError, match="no finalist fits the serving budget"):
        select(ds, _cfg(max_latency_us=1e-3), workdir=tmp_path, timer=_param_count_timer)
    free.cleanup(), budget.cleanup()


def test_the_card_holds_the_leaderboard_and_the_run_directory_serves(tmp_path):
    ds = _quadratic()
    result = select(ds, _cfg(), workdir=tmp_path)
    run = result.save(tmp_path / "run")
    result.cleanup()
    card = card_mod.read_card(run)
    sel = card["selection"]
    assert sel["selected"] is True and sel["metric"] == "r2"
    assert [e["rank"] for e in sel["leaderboard"]] == list(range(1, len(GRID) + 1))
    finalists = [e for e in sel["leaderboard"] if "deployed" in e]
    assert len(finalists) == 3 and all(e["deployed"]["weight_bytes"] > 0 for e in finalists)
    assert "cross-validation" in sel["how"] and "test split scored once" in sel["how"]
    assert card["metrics"]["test"]["r2"] == pytest.approx(sel["test_score"])
    assert card["model"]["spec"]["kind"] == sel["chosen"]["params"]["model"]
    out = load_run(run).predict({"instances": [[1.0, 0.5, 0.0]]})
    assert abs(out["predictions"][0] - 1.5) < 0.75  # 1² + 0.5, from the chosen MLP
    assert not list(tmp_path.glob(".aiaas-select-*"))  # the finalists' directories are gone


def test_cli_select_json_and_bad_options(tmp_path, capsys):
    X = np.random.default_rng(2).normal(size=(90, 2))
    y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    csv = tmp_path / "cls.csv"
    csv.write_text("a,b,label\n" + "".join(f"{a:.5f},{b:.5f},{t}\n" for (a, b), t in zip(X, y)))
    out = tmp_path / "run"
    code = main(["train", str(csv), "--target", "label", "--out", str(out), "--select", "--cv", "3", "--budget", "4",
                 "--no-compile", "--no-progress", "--json", "--plot", str(tmp_path / "sel.png")])  # fmt: skip
    assert code == 0
    assert (tmp_path / "sel.png").read_bytes()[:4] == b"\x89PNG"  # score against latency, drawn
    doc = json.loads(capsys.readouterr().out)
    sel = doc["selection"]
    assert sel["metric"] == "accuracy" and sel["tried"] == 4
    assert sum(e["status"] == "not tried" for e in sel["leaderboard"]) == sel["candidates"] - 4
    assert sel["leaderboard"][0]["mean"] > 0.8
    for argv, word in (
        (["--cv", "3"], "--cv: only with --select"),
        (["--select", "--metric", "r2"], "metric: 'r2' is not one of"),
        (["--select", "--cv", "1"], "cv"),
    ):
        code = main(["train", str(csv), "--target", "label", "--out", str(tmp_path / "bad"), "--no-progress", *argv])
        assert code == 2
        assert word in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_the_time_limit_stops_starting_candidates(tmp_path):
    ds = _quadratic(n=90)
    with pytest.raises(ValueError, match="--time-limit 1e-09 s ran out before any candidate was scored"):
        select(ds, _cfg(time_limit=1e-9), workdir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing exported


def test_the_budget_tries_the_first_candidates_and_reports_the_rest(tmp_path):
    ds = _quadratic(n=90)
    r = select(ds, _cfg(budget=2, finalists=1, halving=False, epochs=30), workdir=tmp_path)
    r.cleanup()
    tried = {e["id"] for e in r.leaderboard if e["status"] == "ok"}
    assert tried == {0, 1} and r.section["tried"] == 2
    assert all(e["reason"] == "beyond --budget 2" for e in r.leaderboard if e["id"] >= 2)


def test_the_first_halving_rung_fits_on_a_sample_and_the_last_on_every_fold_row(tmp_path, monkeypatch):
    ds = _quadratic(n=2100)
    sizes = []
    real = train_mod.standardize_stats
    monkeypatch.setattr(train_mod, "standardize_stats", lambda Xf: (sizes.append(len(Xf)), real(Xf))[1])
    grid = [{"model": "linear", "lr": lr} for lr in (0.01, 0.02, 0.05, 0.1)]
    r = select(ds, _cfg(grid=grid, finalists=1, epochs=30), workdir=tmp_path)
    r.cleanup()
    fold_rows = 1680 - 1680 // 3  # 2,100 rows − 20 % test = 1,680; 3 folds of 560
    assert sizes[: 4 * 3] == [1000] * 12  # rung 0: every candidate, each fold fitted on a 1,000-row sample
    assert sizes[12:-1] == [fold_rows] * 6  # rung 1: the best 2 of 4 (a third, rounded up), on all rows
    assert sizes[-1] == 1680  # the finalist's refit: the whole training split
    assert {e["rows"] for e in r.leaderboard if e["rung"] == 1} == {None}


def test_cli_epochs_under_select_are_the_last_rungs_and_the_refits(tmp_path, capsys):
    ds = _quadratic(n=90)
    csv = tmp_path / "q.csv"
    csv.write_text("a,b,c,y\n" + "".join(",".join(f"{v:.6f}" for v in (*x, t)) + "\n" for x, t in zip(ds.X, ds.y)))
    code = main(["train", str(csv), "--target", "y", "--out", str(tmp_path / "run"), "--select", "--cv", "2", "--budget", "2",
                 "--epochs", "37", "--no-compile", "--no-progress", "--json"])  # fmt: skip
    assert code == 0
    card = json.loads(capsys.readouterr().out)
    scored = [e for e in card["selection"]["leaderboard"] if e["status"] == "ok"]
    assert len(scored) == 2 and {e["epochs"] for e in scored} == {37}
    assert "epochs per rung [37]" in card["selection"]["how"]
    assert card["selection"]["chosen"]["params"]["model"] == "linear"  # x1 is linear: it beats the mean
    # the refit of the chosen model: 37 epochs at most too (the automatic linear solver stops once converged)
    assert card["training"]["settings"]["epochs"] == 37 and card["training"]["epochs_run"] <= 37
    assert card["training"]["settings"]["lr"] is None and card["training"]["solver"]["lr"] > 0


def test_the_leaderboard_shows_the_rung_each_candidate_was_scored_at():
    from aiaas_torch.leaderboard import table

    def entry(rank, rung, epochs, mean):
        return {"rank": rank, "rung": rung, "epochs": epochs, "params": {"model": "linear", "lr": 0.1}, "status": "ok",
                "mean": mean, "std": 0.01, "fit_seconds": 0.5}  # fmt: skip

    text = table([entry(9, 1, 300, 0.80), entry(10, 0, 100, 0.90),
                  {"rank": 11, "rung": None, "params": {"model": "mlp"}, "status": "not tried"}])  # fmt: skip
    lines = text.splitlines()
    assert "rung (epochs)" in lines[0] and "ranked by the halving rung reached" in lines[1]
    assert re.match(r"^\s+9\s+2 \(300\)\s+linear", lines[2]), lines[2]
    assert re.match(r"^\s+10\s+1 \(100\)\s+linear", lines[3]), lines[3]
    assert re.match(r"^\s+11\s+-\s+mlp", lines[4]), lines[4]
