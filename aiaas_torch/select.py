"""Model selection: a fixed grid of candidates, k-fold cross-validation, successive halving, deployed figures.

`select` holds out a test split, scores every candidate by k-fold cross-validation on the training split (stratified
for classes; `train` fits scaling and the rotation on each fold's training rows only, so no fold leaks into its own
preprocessing), promotes the best third of each rung to more epochs (successive halving), refits up to three
finalists on the whole training split and exports each through `export_run`, so that their deployed figures (the
program the per-host optimization chose, weight bytes, latency per row at batch 1 and 16) are measured, not
guessed. Only finalists are exported, so only finalists are ever compiled. The best finalist within the serving
budget is chosen; the test split is scored once, after the choice. Without a time limit the same data and
settings give the same ranking and the same choice (full-batch SGD from a fixed seed is deterministic on CPU, and
a candidate's folds, fitted side by side in threads, each get the same seeded start).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .candidates import baseline_metrics, candidate_config, default_grid, fit_candidate, train_quietly
from .data import Dataset, split
from .errors import InputError, InputTypeError, check_int, check_number
from .quantize import QuantConfig
from .train import TrainResult, check_learnable, evaluate

METRICS = {"regression": ("r2", "neg_rmse", "neg_mae"), "classification": ("accuracy", "neg_log_loss")}
LATENCY_BATCHES = (1, 16)
SEARCH_THREADS = 1  # torch intra-op threads; the folds of a candidate run side by side instead (fold_workers)
MIN_RUNG_ROWS = 1000  # an earlier halving rung fits on no fewer rows than this
HALVING_FACTOR = 3  # each rung keeps the best third (at least the finalists) and trains them 3× longer


@dataclass
class SelectConfig:
    """Search settings: folds, candidate budget, time limit, metric, serving budget, finalists, test share, seed."""

    cv: int = 5
    budget: int | None = None  # candidates to try (None: the whole grid)
    time_limit: float | None = None  # seconds; candidates not started by then are reported "not tried"
    metric: str | None = None  # None: r2 for regression, accuracy for classes
    max_latency_us: float | None = None  # per row at batch 1, of the program the optimization serves
    max_bytes: int | None = None  # weight bytes of the served program
    finalists: int = 3
    test_fraction: float = 0.2
    epochs: int = 300  # full epochs of the last rung
    seed: int = 0
    halving: bool = True
    grid: list[dict] | None = None  # None: default_grid(task); else dicts of TrainConfig fields (or {"model": "baseline"})
    quant: QuantConfig = field(default_factory=QuantConfig)
    compile: str = "auto"  # for the finalists' exports
    progress: bool | None = None  # None: on when stderr is a terminal

    def validate(self, task: str) -> "SelectConfig":
        """Return self after checking every field for a `task` data set, raising InputError naming the bad one."""
        check_int("cv", self.cv, 2)
        if self.budget is not None:
            check_int("budget", self.budget, 1)
        if self.time_limit is not None:
            check_number("time_limit", self.time_limit, positive=True)
        if self.metric is not None and self.metric not in METRICS[task]:
            raise InputError(f"metric: {self.metric!r} is not one of {METRICS[task]} for a {task} target")
        if self.max_latency_us is not None:
            check_number("max_latency_us", self.max_latency_us, positive=True)
        if self.max_bytes is not None:
            check_int("max_bytes", self.max_bytes, 1)
        check_int("finalists", self.finalists, 1)
        tf = self.test_fraction
        if not isinstance(tf, (int, float)) or isinstance(tf, bool) or not 0.0 < tf < 1.0:
            raise InputError(f"test_fraction: {tf!r} must be in (0, 1)")
        check_int("epochs", self.epochs, 1)
        check_int("seed", self.seed, 0)
        if self.grid is not None and (not isinstance(self.grid, list) or not self.grid or not all(isinstance(g, dict) for g in self.grid)):
            raise InputError("grid: must be a non-empty list of dicts of TrainConfig fields")
        return self


def folds(y: np.ndarray, k: int, seed: int, stratified: bool) -> list[np.ndarray]:
    """Return k arrays of validation row indices partitioning 0..n-1; stratified: each class spread evenly over them."""
    n = len(y)
    if n < k:
        raise InputError(f"cv: {k} folds need at least {k} training rows, got {n}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratified else [np.arange(n)]
    out: list[list[int]] = [[] for _ in range(k)]
    start = 0
    for g in groups:
        g = rng.permutation(g)
        for i, row in enumerate(g):
            out[(start + i) % k].append(int(row))
        start += len(g)  # the next class continues where this one ended: fold sizes differ by at most one
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in out]


def score(metrics: dict, metric: str) -> float:
    """Return `metric` in higher-is-better form from evaluate()'s metrics (neg_* negate the error)."""
    if metric.startswith("neg_"):
        return -float(metrics[{"neg_rmse": "rmse", "neg_mae": "mae", "neg_log_loss": "log_loss"}[metric]])
    v = metrics[metric]
    return -math.inf if v is None else float(v)


def cross_validate(cand: dict, train_ds: Dataset, fold_idx: list[np.ndarray], metric: str, epochs: int, seed: int,
                   max_rows: int | None = None) -> dict:  # fmt: skip
    """Return {"scores": per-fold scores, "mean", "std", "fit_seconds"} of a candidate; preprocessing is fitted per fold.

    max_rows: fit each fold on at most this many of its training rows (a seeded sample; halving's cheap first rung).
    """
    n = len(train_ds)
    t0 = time.perf_counter()

    def fold_score(val: np.ndarray) -> float:
        keep = np.ones(n, dtype=bool)
        keep[val] = False
        rows = np.flatnonzero(keep)
        if max_rows is not None and len(rows) > max_rows:
            rows = np.sort(rows[np.random.default_rng(seed).permutation(len(rows))[:max_rows]])
        fold_train, fold_val = train_ds.subset(rows), train_ds.subset(val)
        if cand["model"] == "baseline":
            m = baseline_metrics(fold_train, fold_val.X, fold_val.y)
        else:
            m = evaluate(train_quietly(fold_train, candidate_config(cand, epochs, seed)).model, fold_val.X, fold_val.y, train_ds.schema.task)
        s = score(m, metric)
        if not math.isfinite(s):  # e.g. R² of a fold whose target is constant: no ranking can use it
            raise InputError(f"{metric} is not finite on a validation fold of {len(val)} rows")
        return s

    # Each fold's fit is deterministic on its own (seeded init under train's lock, full batch), so running them side
    # by side on the host's cores gives the same scores as one after another.
    with ThreadPoolExecutor(max_workers=fold_workers(len(fold_idx))) as pool:
        scores = list(pool.map(fold_score, fold_idx))
    return {"scores": scores, "mean": statistics.fmean(scores), "std": statistics.pstdev(scores),
            "fit_seconds": (time.perf_counter() - t0) / len(fold_idx)}  # fmt: skip


def fold_workers(k: int) -> int:
    """Return how many folds to fit at once: one per CPU this process may use, at most k."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(k, cpus))


@dataclass
class SelectResult:
    """The leaderboard (best first), the chosen candidate refitted on the whole training split, and its test metrics."""

    leaderboard: list[dict]
    best: TrainResult
    test_metrics: dict
    section: dict  # the model card's "selection" section
    staged: Path | None = None  # the chosen finalist's exported run directory, waiting for `save`
    workdir: Path | None = None

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write the chosen finalist's run directory (its card with the selection section) atomically; returns its path."""
        from . import rundir
        from .atomic import staging_dir
        from .card import read_card

        run_dir = Path(run_dir)
        with staging_dir(run_dir) as staging:
            shutil.copytree(self.staged, staging, dirs_exist_ok=True)
            card = read_card(staging)
            card["selection"] = self.section
            card["metrics"]["test"] = self.test_metrics
            rundir.finish(staging, run_dir, card)
        return run_dir

    def cleanup(self) -> None:
        """Remove the finalists' exported run directories; returns None."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def select(dataset: Dataset, config: SelectConfig | None = None, workdir: str | os.PathLike | None = None, timer=None) -> SelectResult:
    """Return a SelectResult: the candidates ranked by cross-validation, finalists measured as deployed, the choice.

    workdir: where the finalists' run directories are exported (a temporary folder inside it); timer: replaces the
    optimization's timing of programs (tests inject timings).
    """
    saved = torch.get_num_threads()
    # Many small fits: a second intra-op thread gains nothing on them, and on a busy 2-core host OpenMP's waiting
    # made one 5-fold fit 15× slower (24.6 s against 1.6 s with one thread, iris MLP 64x64, measured here).
    torch.set_num_threads(SEARCH_THREADS)
    try:
        return _select(dataset, config, workdir, timer)
    finally:
        torch.set_num_threads(saved)


def _select(dataset: Dataset, config: SelectConfig | None, workdir, timer) -> SelectResult:
    """Return select()'s result, run with the thread count already set."""
    if not isinstance(dataset, Dataset):
        raise InputTypeError(f"dataset: expected aiaas_torch.data.Dataset, got {type(dataset).__name__}")
    task = dataset.schema.task
    config = (config or SelectConfig()).validate(task)
    check_learnable(dataset)
    metric = config.metric or METRICS[task][0]
    grid = config.grid or default_grid(task, float(np.std(dataset.y)) if task == "regression" else 1.0)
    for g in grid:
        if g.get("model") != "baseline":
            candidate_config(g, 1, 0).validate()  # a bad grid entry fails before any training
    t_start = time.perf_counter()
    train_ds, test_ds = split(dataset, config.test_fraction, config.seed)
    fold_idx = folds(train_ds.y, config.cv, config.seed, stratified=task == "classification")
    # the budget takes the grid's first entries: the baseline and the simplest models come first, and the order is fixed
    tried = list(range(min(len(grid), config.budget or len(grid))))
    board = {i: {"id": i, "params": dict(grid[i]), "status": "not tried", "rung": None} for i in range(len(grid))}
    for i in range(len(grid)):
        if i not in tried:
            board[i]["reason"] = f"beyond --budget {config.budget}"
    rungs = _rung_epochs(config.epochs, len(tried), config.finalists) if config.halving else [config.epochs]
    # Each earlier rung also fits on a 3× smaller sample of the fold's rows (not below MIN_RUNG_ROWS): as cheap as
    # HalvingGridSearchCV's first rungs, and the last rung scores every survivor on all of them.
    rung_rows = [max(MIN_RUNG_ROWS, len(train_ds) // HALVING_FACTOR ** (len(rungs) - 1 - r)) for r in range(len(rungs) - 1)] + [None]
    show = sys.stderr.isatty() if config.progress is None else bool(config.progress)
    bar = tqdm(total=len(tried), disable=not show, desc="select", unit="candidate", leave=False)
    alive, out_of_time = list(tried), False
    for r, epochs in enumerate(rungs):
        for i in alive:
            if config.time_limit is not None and time.perf_counter() - t_start > config.time_limit:
                out_of_time = True
                break
            e = board[i]
            try:
                e.update(cross_validate(grid[i], train_ds, fold_idx, metric, epochs, config.seed, rung_rows[r]), status="ok", rung=r,
                         epochs=epochs, rows=rung_rows[r])  # fmt: skip
            except InputError as err:  # e.g. divergence: the candidate is out, the search goes on
                e.update(status="failed", reason=str(err), rung=r, epochs=epochs)
            if r == 0:
                bar.update(1)
        if out_of_time:
            for e in board.values():
                if e["rung"] is None and e["status"] == "not tried" and "reason" not in e:
                    e["reason"] = f"--time-limit {config.time_limit:g} s reached"
            break
        ok = sorted((i for i in alive if board[i]["status"] == "ok"), key=lambda i: (board[i]["rung"] != r, -board[i]["mean"], i))
        if r + 1 < len(rungs):
            alive = ok[: max(config.finalists, math.ceil(len(ok) / HALVING_FACTOR))]
    bar.close()
    search_seconds = time.perf_counter() - t_start
    ranked = _rank(board)
    if not ranked or ranked[0]["status"] != "ok":
        if out_of_time:
            raise InputError(f"select: --time-limit {config.time_limit:g} s ran out before any candidate was scored")
        raise InputError("select: no candidate could be scored (every one failed or none was tried)")
    finalists = [e for e in ranked if e["status"] == "ok"][: config.finalists]
    root = Path(tempfile.mkdtemp(prefix=".aiaas-select-", dir=workdir))
    try:
        results, dirs = {}, {}
        for e in finalists:
            results[e["id"]], dirs[e["id"]], e["deployed"] = _deploy(grid[e["id"]], train_ds, config, root, timer)
        chosen, ruled_out = None, []
        for e in finalists:
            why = _over_budget(e["deployed"], config)
            if why is None:
                chosen = e
                break
            ruled_out.append({"rank": e["rank"], "params": e["params"], "cv_mean": e["mean"], "why": why})
            e["ruled_out"] = why
        if chosen is None:
            raise InputError("select: no finalist fits the serving budget: " + "; ".join(f"rank {r['rank']}: {r['why']}" for r in ruled_out))
        best = results[chosen["id"]]
        test_metrics = evaluate(best.model, test_ds.X, test_ds.y, task)
        best.metrics["test"] = test_metrics
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    section = {
        "selected": True,
        "chosen": {"rank": chosen["rank"], "params": chosen["params"]},
        "metric": metric,
        "test_score": score(test_metrics, metric),
        "test_rows": len(test_ds),
        "how": (f"{config.cv}-fold {'stratified ' if task == 'classification' else ''}cross-validation on {len(train_ds)} "
                f"training rows (scaling and rotation fitted inside each fold), successive halving "
                f"{'on' if config.halving else 'off'} (epochs per rung {rungs}, rows per fold fit {rung_rows}: None = all), {len(finalists)} finalist(s) exported and "
                f"measured as deployed, the best within the budget refitted on the whole training split; the "
                f"{len(test_ds)}-row test split scored once, after the choice"),  # fmt: skip
        "candidates": len(grid),
        "tried": sum(1 for e in ranked if e["status"] != "not tried"),
        "budget": {"candidates": config.budget, "time_limit_s": config.time_limit, "max_latency_us": config.max_latency_us,
                   "max_bytes": config.max_bytes},  # fmt: skip
        "ruled_out": ruled_out,
        "search_seconds": round(search_seconds, 3),
        "seed": config.seed,
        "leaderboard": ranked,
    }
    return SelectResult(ranked, best, test_metrics, section, dirs[chosen["id"]], root)


def _rung_epochs(epochs: int, n: int, finalists: int) -> list[int]:
    """Return the epochs of each halving rung, the last being `epochs`: a first rung at a third of them when it cuts anything."""
    rungs, alive = [epochs], n
    while alive > finalists and rungs[0] // HALVING_FACTOR >= 10 and len(rungs) < 2:
        rungs.insert(0, rungs[0] // HALVING_FACTOR)
        alive = math.ceil(alive / HALVING_FACTOR)
    return rungs


def _rank(board: dict) -> list[dict]:
    """Return the leaderboard rows best first: deepest rung, then CV mean, then grid order (simplest first on ties)."""
    def key(e):
        if e["status"] != "ok":
            return (1, 0, 0.0, e["id"])
        return (0, -e["rung"], -e["mean"], e["id"])

    rows = sorted(board.values(), key=key)
    for r, e in enumerate(rows, 1):
        e["rank"] = r
        for k in ("mean", "std", "fit_seconds"):
            if k in e:
                e[k] = round(e[k], 6) if k != "fit_seconds" else round(e[k], 4)
        if "scores" in e:
            e["scores"] = [round(s, 6) for s in e["scores"]]
    return rows


def _deploy(cand: dict, train_ds: Dataset, config: SelectConfig, root: Path, timer) -> tuple[TrainResult, Path, dict]:
    """Return (refit result, exported run directory, deployed figures) of one finalist, exported through export_run."""
    from .export import export_run

    result = fit_candidate(cand, train_ds, config.epochs, config.seed)
    run_dir = root / f"finalist-{len(list(root.iterdir()))}"
    exported = export_run(result, run_dir, config.quant, compile=config.compile, timer=timer)
    return result, run_dir, deployed_figures(exported.card)


def deployed_figures(card: dict) -> dict:
    """Return the served program at batch 1, its precision, weight bytes and µs per row at batch 1 and 16 from a card."""
    opt, q = card["optimization"], card["quantization"]
    out = {}
    for b in LATENCY_BATCHES:
        row = next(r for r in opt["plan"] if r["max_rows"] is None or r["max_rows"] >= b)
        name = row["candidate"]
        out[f"program_b{b}"] = name
        out[f"us_per_row_b{b}"] = round(opt["candidates"][name]["seconds"][str(b)] / b * 1e6, 2)
    served = opt["candidates"][out["program_b1"]]
    out["precision"] = served["precision"]
    out["weight_bytes"] = q["weight_bytes_before"] if served["precision"] in ("float32", "float") else q["weight_bytes_after"]
    out["compiled"] = served["kind"] == "compiled"
    return out


def _over_budget(d: dict, config: SelectConfig) -> str | None:
    """Return why deployed figures `d` exceed the serving budget, or None when they fit."""
    if config.max_latency_us is not None and d["us_per_row_b1"] > config.max_latency_us:
        return f"{d['us_per_row_b1']:g} µs per row at batch 1 > --max-latency-us {config.max_latency_us:g}"
    if config.max_bytes is not None and d["weight_bytes"] > config.max_bytes:
        return f"{d['weight_bytes']} weight bytes > --max-bytes {config.max_bytes}"
    return None
