"""Diamonds benchmark: the default `train()` on a real collinear table against scikit-learn on the same split.

The table is the public diamonds data set (53,940 rows; carat, cut, color, clarity, depth, table, x, y, z → price;
three text columns). It is fetched as plotnine's bundled copy, without installing plotnine: `pip download --no-deps
plotnine==0.15.9` into a temporary folder, then `plotnine/data/diamonds.csv` is read out of the wheel (a zip). Give
--csv to use a copy you already have.

Our side: `train(load_csv(diamonds, "price"), TrainConfig())` — the defaults (whitened, rate from the data, stop on
convergence), validation split 0.2 with seed 0. scikit-learn's side (the benchmark venv .venv-bench, in a child
process, fit time only), on the same split and the same features (one-hot of every category the training rows hold,
the numbers as they are): LinearRegression (the least-squares optimum: the R² gap, goal ≤ 0.002) and StandardScaler +
SGDRegressor with its defaults (the time ratio). Runs in turns (--repeats, medians), and prints the host's CPU, ISA
and load average:

    .venv/bin/python benchmarks/diamonds.py --repeats 3 [--out docs/bench/diamonds.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from aiaas_torch import bench
from aiaas_torch.atomic import write_json_atomic
from aiaas_torch.data import load_csv, split
from aiaas_torch.making import vector_isa
from aiaas_torch.train import TrainConfig, train

WHEEL = "plotnine==0.15.9"
MEMBER = "plotnine/data/diamonds.csv"
BENCH_PY = Path(__file__).resolve().parent.parent / ".venv-bench" / "bin" / "python"

SKLEARN_FIT = """
import json, sys, time, numpy as np
from sklearn.linear_model import LinearRegression, SGDRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
d = sys.argv[1]
Xt, yt, Xv, yv = (np.load(f"{d}/{k}.npy") for k in ("Xt", "yt", "Xv", "yv"))
t0 = time.perf_counter()
ols = LinearRegression().fit(Xt, yt)
t_ols = time.perf_counter() - t0
t0 = time.perf_counter()
sgd = make_pipeline(StandardScaler(), SGDRegressor(random_state=0)).fit(Xt, yt)
t_sgd = time.perf_counter() - t0
print(json.dumps({"ols_r2": float(ols.score(Xv, yv)), "ols_s": t_ols, "sgd_r2": float(sgd.score(Xv, yv)), "sgd_s": t_sgd,
                  "sgd_n_iter": int(sgd[-1].n_iter_)}))
"""


def fetch(dest: Path) -> Path:
    """Return the path of diamonds.csv, read out of plotnine's wheel (pip download, no install) into `dest`."""
    out = dest / "diamonds.csv"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", d, WHEEL], check=True)
        (wheel,) = Path(d).glob("plotnine-*.whl")
        with zipfile.ZipFile(wheel) as z:
            out.write_bytes(z.read(MEMBER))
    return out


def design(ds, train_X: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Return scikit-learn's features: one-hot of each categorical column's training codes, then the numbers (float64)."""
    parts = []
    for j, f in enumerate(ds.schema.features):
        if f.kind == "categorical":
            seen = np.unique(train_X[:, j])
            parts.append((X[:, [j]] == seen[None, :]).astype(np.float64))
        else:
            parts.append(X[:, [j]].astype(np.float64))
    return np.hstack(parts)


def run(csv: Path, repeats: int) -> dict:
    """Return medians (and every run) of our default train() and scikit-learn's fits, in turns, on one split."""
    if not BENCH_PY.exists():
        raise SystemExit(f"{BENCH_PY}: missing; python3 -m venv .venv-bench && .venv-bench/bin/python -m pip install "
                         "-r benchmarks/requirements-bench.txt")  # fmt: skip
    ds = load_csv(csv, "price")
    tr, va = split(ds, 0.2, 0)  # train()'s own split: TrainConfig's val_fraction 0.2 and seed 0
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as d:
        for k, a in {"Xt": design(ds, tr.X, tr.X), "yt": tr.y.astype(np.float64), "Xv": design(ds, tr.X, va.X),
                     "yv": va.y.astype(np.float64)}.items():  # fmt: skip
            np.save(f"{d}/{k}.npy", a)
        for _ in range(repeats):  # in turns: both see the same machine state
            t0 = time.perf_counter()
            r = train(ds, TrainConfig(progress=False))
            ours.append({"s": time.perf_counter() - t0, "r2": r.metrics["validation"]["r2"], "solver": r.solver,
                         "warnings": r.warnings})  # fmt: skip
            out = subprocess.run([str(BENCH_PY), "-c", SKLEARN_FIT, d], check=True, capture_output=True, text=True)
            theirs.append(json.loads(out.stdout))
    med = lambda rows, k: statistics.median(x[k] for x in rows)  # noqa: E731
    r2_ols = med(theirs, "ols_r2")
    return {"rows": len(ds), "train_rows": len(tr), "validation_rows": len(va), "features_onehot": int(design(ds, tr.X, va.X[:1]).shape[1]),
            "ours_r2": round(med(ours, "r2"), 6), "linear_regression_r2": round(r2_ols, 6),
            "r2_gap": round(r2_ols - med(ours, "r2"), 6), "sgdregressor_r2": round(med(theirs, "sgd_r2"), 6),
            "ours_s": round(med(ours, "s"), 3), "sgdregressor_s": round(med(theirs, "sgd_s"), 3),
            "linear_regression_s": round(med(theirs, "ols_s"), 3), "ratio_vs_sgdregressor": round(med(ours, "s") / med(theirs, "sgd_s"), 3),
            "ours_all_s": [round(o["s"], 3) for o in ours], "sgdregressor_all_s": [round(t["sgd_s"], 3) for t in theirs],
            "ours_solver": ours[-1]["solver"], "ours_warnings": ours[-1]["warnings"]}  # fmt: skip


def main(argv=None) -> int:
    """Run the diamonds benchmark; print a summary; write JSON with --out."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default=None, help="diamonds.csv (default: fetched from plotnine's wheel into a temporary folder)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each, in turns (median)")
    p.add_argument("--out", default=None, help="write the JSON result here")
    a = p.parse_args(argv)
    load = bench.wait_quiet(1.0, 60.0, 30.0, echo=lambda m: print(m, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory() as d:
        res = {"machine": {**bench.machine_info(), "isa": vector_isa(), "loadavg_at_start": round(load, 2)},
               "command": "benchmarks/diamonds.py " + " ".join(argv or sys.argv[1:]),
               **run(Path(a.csv) if a.csv else fetch(Path(d)), a.repeats)}  # fmt: skip
    res["machine"]["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    m, s = res["machine"], res["ours_solver"]
    print(f"{res['command']}; {m['cpu']} ({m['isa']}), {m['cores']} cores, load average {m['loadavg_at_start']} → "
          f"{m['loadavg_at_end']}\ndiamonds {res['rows']} rows ({res['train_rows']} train / {res['validation_rows']} "
          f"validation, {res['features_onehot']} features one-hot)\n"
          f"validation R²: ours (defaults) {res['ours_r2']:.6f}, LinearRegression {res['linear_regression_r2']:.6f}, "
          f"gap {res['r2_gap']:.6f} (goal ≤ 0.002); SGDRegressor {res['sgdregressor_r2']:.6f}\n"
          f"time (median of {a.repeats}): ours {res['ours_s']} s, SGDRegressor {res['sgdregressor_s']} s, ratio "
          f"{res['ratio_vs_sgdregressor']} (LinearRegression {res['linear_regression_s']} s)\n"
          f"our solver: lr {s['lr']:.4g}, momentum {s['momentum']}, batch {s['batch_size']}, {s['epochs_run']} epochs, "
          f"stopped on tol: {s['stopped_on_tol']}; warnings: {res['ours_warnings'] or 'none'}")  # fmt: skip
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(a.out), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
