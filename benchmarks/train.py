"""Training benchmark: SGD on a generated 1,000,000 × 20 linear data set against closed-form least squares.

Reports, per SGD setting: epochs and seconds until the validation MSE is within 1 % of the closed-form least-squares
fit (on the same training split), samples/s, and memory: tracemalloc peaks (numpy allocations) while loading and
splitting, the process's peak RSS (ru_maxrss), and whether the tensors training reads are views of the split's arrays
(torch.from_numpy: same data pointer) — i.e. how many times the data set is copied on the way to the optimizer.

    .venv/bin/python benchmarks/train.py --out docs/bench/train.json

With --vs-sgdregressor it instead times the default `train()` against scikit-learn's SGDRegressor (StandardScaler +
SGDRegressor with its defaults, run by the benchmark venv .venv-bench in a child process, fit time only) on generated
400,000 × 20 regression — one well-conditioned case, one collinear — in turns, medians of --repeats, and prints the
time ratio and each one's validation R² gap to least squares on the same split, with the host's CPU and ISA:

    .venv/bin/python benchmarks/train.py --vs-sgdregressor --rows 400000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil
import torch

from aiaas_torch import bench
from aiaas_torch.data import from_arrays, split
from aiaas_torch.train import TrainConfig, train

MB = 2**20


def rss_mb() -> float:
    """Return this process's resident memory in MiB."""
    return psutil.Process().memory_info().rss / MB


def maxrss_mb() -> float:
    """Return this process's peak resident memory so far in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (X, y, w): float32 features with varied scales, y = X·w + 3 + noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32)
    X *= rng.uniform(0.5, 20.0, d).astype(np.float32)  # unscaled features: the model's scaling layer must cope
    X += rng.uniform(-5, 5, d).astype(np.float32)
    w = rng.normal(0, 1, d)
    y = (X.astype(np.float64) @ w + 3.0 + rng.normal(0, 0.5, n)).astype(np.float32)
    return X, y, w


def make_collinear(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (X, y) like make_data, but the last 5 columns are linear combinations of others plus 1 % noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X[:, d - 5 :] = X[:, :5] @ rng.normal(0, 1, (5, 5)) + X[:, 5:10] + rng.normal(0, 0.01, (n, 5))
    X = X * rng.uniform(0.5, 20.0, d) + rng.uniform(-5, 5, d)
    y = X @ rng.normal(0, 1, d) + 3.0 + rng.normal(0, 0.5, n)
    return X.astype(np.float32), y.astype(np.float32)


SKLEARN_FIT = """
import json, sys, time, numpy as np
from sklearn.linear_model import SGDRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
d = sys.argv[1]
Xt, yt, Xv, yv = (np.load(f"{d}/{k}.npy") for k in ("Xt", "yt", "Xv", "yv"))
t0 = time.perf_counter()
m = make_pipeline(StandardScaler(), SGDRegressor(random_state=0)).fit(Xt, yt)
s = time.perf_counter() - t0
print(json.dumps({"seconds": s, "r2": float(m.score(Xv, yv)), "n_iter": int(m[-1].n_iter_)}))
"""


def versus_sgdregressor(rows: int, features: int, repeats: int) -> dict:
    """Return, per case, the medians of our default train() and SGDRegressor's fit time, their ratio and R² gaps."""
    py = Path(__file__).resolve().parent.parent / ".venv-bench" / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"{py}: missing; python3 -m venv .venv-bench && .venv-bench/bin/pip install scikit-learn numpy")
    x = np.arange(1, 6, dtype=np.float32)
    train(from_arrays(x.reshape(-1, 1), 2 * x), TrainConfig(progress=False))  # warm-up: torch's lazy imports
    out = {}
    for case, (X, y) in {"well-conditioned": make_data(rows, features)[:2], "collinear": make_collinear(rows, features)}.items():
        ds = from_arrays(X, y)
        tr, va = split(ds, 0.2, 0)
        yv = va.y.astype(np.float64)
        r2_ls = 1.0 - closed_form_mse(tr.X, tr.y, va.X, va.y) / float(np.var(yv))
        ours, theirs = [], []
        with tempfile.TemporaryDirectory() as d:
            for k, a in {"Xt": tr.X, "yt": tr.y, "Xv": va.X, "yv": va.y}.items():
                np.save(f"{d}/{k}.npy", a)
            for _ in range(repeats):  # in turns: both see the same machine state
                t0 = time.perf_counter()
                r = train(ds, TrainConfig(progress=False))
                ours.append((time.perf_counter() - t0, r.metrics["validation"]["r2"], r.epochs_run, len(r.warnings)))
                theirs.append(json.loads(subprocess.run([str(py), "-c", SKLEARN_FIT, d], check=True, capture_output=True,
                                                        text=True).stdout))  # fmt: skip
        t_ours = statistics.median(o[0] for o in ours)
        t_sk = statistics.median(t["seconds"] for t in theirs)
        out[case] = {"ours_s": round(t_ours, 3), "sgdregressor_s": round(t_sk, 3), "ratio": round(t_ours / t_sk, 3),
                     "ours_r2_gap": round(r2_ls - statistics.median(o[1] for o in ours), 6),
                     "sgdregressor_r2_gap": round(r2_ls - statistics.median(t["r2"] for t in theirs), 6),
                     "r2_least_squares": round(r2_ls, 6), "ours_epochs": [o[2] for o in ours],
                     "ours_warnings": [o[3] for o in ours], "sgdregressor_n_iter": [t["n_iter"] for t in theirs],
                     "ours_all_s": [round(o[0], 3) for o in ours], "sgdregressor_all_s": [round(t["seconds"], 3) for t in theirs]}  # fmt: skip
    return out


def closed_form_mse(train_X, train_y, val_X, val_y) -> float:
    """Return the validation MSE of ordinary least squares (with intercept) fitted on the training split."""
    A = np.hstack([train_X.astype(np.float64), np.ones((len(train_X), 1))])
    coef, *_ = np.linalg.lstsq(A, train_y.astype(np.float64), rcond=None)
    pred = val_X.astype(np.float64) @ coef[:-1] + coef[-1]
    return float(np.mean((pred - val_y) ** 2))


def loading(X: np.ndarray, y: np.ndarray) -> tuple[object, dict]:
    """Return (dataset, figures) for from_arrays + split, with the memory each step allocated (tracemalloc)."""
    figs = {"dataset_mb": round((X.nbytes + y.nbytes) / MB, 1)}
    tracemalloc.start()
    t0 = time.perf_counter()
    ds = from_arrays(X, y)
    figs["from_arrays_s_under_tracemalloc"] = round(time.perf_counter() - t0, 2)  # tracemalloc slows allocations
    cur, peak = tracemalloc.get_traced_memory()
    figs["from_arrays_kept_mb"], figs["from_arrays_peak_mb"] = round(cur / MB, 1), round(peak / MB, 1)
    figs["from_arrays_shares_input"] = bool(np.shares_memory(ds.X, X))
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    tr, va = split(ds, 0.2, 0)
    figs["split_s"] = round(time.perf_counter() - t0, 2)
    cur, peak = tracemalloc.get_traced_memory()
    figs["split_kept_mb"], figs["split_peak_mb"] = round((cur - base) / MB, 1), round((peak - base) / MB, 1)
    tracemalloc.stop()
    del tr, va
    return ds, figs


def check_views(ds, config: TrainConfig) -> dict:
    """Return whether every tensor that train() makes with torch.from_numpy shares its array's memory.

    torch.from_numpy is wrapped for the duration of one 1-epoch run: each call's array data pointer is compared
    with the tensor's, and the arrays are compared with the training split's.
    """
    seen = []
    real = torch.from_numpy

    def spy(a):
        t = real(a)
        seen.append((a.ctypes.data, t.data_ptr(), a.nbytes))
        return t

    torch.from_numpy = spy
    try:
        train(ds, TrainConfig(**{**config.to_dict(), "hidden": tuple(config.hidden), "epochs": 1}))
    finally:
        torch.from_numpy = real
    big = [s for s in seen if s[2] >= 1 * MB]
    return {"from_numpy_calls_over_1MB": len(big), "all_views": all(a == t for a, t, _ in big),
            "bytes_viewed_mb": round(sum(s[2] for s in big) / MB, 1)}  # fmt: skip


def run_setting(ds, config: TrainConfig, target_mse: float, rows: int) -> dict:
    """Return epochs/seconds to reach target_mse on validation, samples/s, final MSE, peak RSS during the run."""
    rss0 = rss_mb()
    result = train(ds, config)
    val_mse = [2.0 * h["val_loss"] for h in result.history]
    hit = next((i + 1 for i, m in enumerate(val_mse) if m <= target_mse), None)
    per_epoch = result.seconds / max(1, result.epochs_run)
    train_rows = result.data["train_rows"]
    return {
        "setting": f"batch {config.batch_size or 'full'}, lr {config.lr}, momentum {config.momentum}",
        "epochs_run": result.epochs_run,
        "epochs_to_1pct": hit,
        "seconds_to_1pct": round(hit * per_epoch, 2) if hit else None,
        "seconds_total": round(result.seconds, 2),
        "samples_per_s": round(train_rows * result.epochs_run / result.seconds),
        "final_val_mse": round(val_mse[-1], 6),
        "val_mse_by_epoch": [round(m, 5) for m in val_mse],
        "rss_before_mb": round(rss0, 0),
        "peak_rss_mb": round(maxrss_mb(), 0),
    }


def main(argv=None) -> int:
    """Run the training benchmark; print a table; write JSON with --out."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--epochs", type=int, default=8, help="epochs per setting (bounded; default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="write the JSON result here")
    p.add_argument("--vs-sgdregressor", action="store_true", help="time the default train() against scikit-learn's SGDRegressor")
    p.add_argument("--repeats", type=int, default=3, help="with --vs-sgdregressor: runs of each, in turns (median)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.vs_sgdregressor:
        from aiaas_torch.making import vector_isa

        load = bench.wait_quiet(1.0, 60.0, 30.0, echo=lambda m: print(m, file=sys.stderr, flush=True))
        res = {"machine": {**bench.machine_info(), "isa": vector_isa(), "loadavg_at_start": round(load, 2)},
               "torch_threads": torch.get_num_threads(), "command": "benchmarks/train.py " + " ".join(argv or sys.argv[1:]),
               "cases": versus_sgdregressor(a.rows, a.features, a.repeats)}  # fmt: skip
        print(versus_table(res))
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
        return 0
    bench.wait_quiet(1.0, 600.0, echo=lambda m: print(m, file=sys.stderr, flush=True))  # 1-min load < 1, ≤ 10 min
    res = {"machine": bench.machine_info(), "torch_threads": torch.get_num_threads(),
           "command": "benchmarks/train.py " + " ".join(argv or sys.argv[1:])}  # fmt: skip
    rss_start = rss_mb()
    X, y, _ = make_data(a.rows, a.features)
    res["rss_after_generating_mb"] = round(rss_mb(), 0)
    ds, res["loading"] = loading(X, y)
    del X, y  # the caller's arrays: from here on only the Dataset's copy lives
    res["rss_after_loading_mb"] = round(rss_mb(), 0)
    tr, va = split(ds, 0.2, 0)
    mse_ls = closed_form_mse(tr.X, tr.y, va.X, va.y)
    del tr, va
    target = 1.01 * mse_ls
    res["closed_form_val_mse"] = round(mse_ls, 6)
    res["target_val_mse"] = round(target, 6)
    settings = [
        TrainConfig(model="linear", epochs=a.epochs, lr=0.05, momentum=0.9, batch_size=1024, progress=False),
        TrainConfig(model="linear", epochs=a.epochs, lr=0.1, momentum=0.0, batch_size=256, progress=False),
        TrainConfig(model="linear", epochs=min(a.epochs * 25, 200), lr=1.0, momentum=0.0, batch_size=None, progress=False),
    ]
    res["views"] = check_views(ds, settings[0])
    res["settings"] = [run_setting(ds, c, target, a.rows) for c in settings]
    res["rss_start_mb"] = round(rss_start, 0)
    print(table(res))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def versus_table(res: dict) -> str:
    """Return the Markdown summary of a --vs-sgdregressor run."""
    m = res["machine"]
    lines = [f"{res['command']}; {m['cpu']} ({m['isa']}), {m['cores']} cores, torch threads {res['torch_threads']}, "
             f"load average {m['loadavg_at_start']} at start", "",
             "| case | ours (median s) | SGDRegressor (median s) | ratio ours/theirs | our R² gap to least squares | "
             "SGDRegressor's R² gap | our epochs |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for case, c in res["cases"].items():
        lines.append(f"| {case} | {c['ours_s']} | {c['sgdregressor_s']} | {c['ratio']} | {c['ours_r2_gap']:.6f} | "
                     f"{c['sgdregressor_r2_gap']:.6f} | {c['ours_epochs']} |")  # fmt: skip
    return "\n".join(lines)


def table(res: dict) -> str:
    """Return the Markdown summary of one run."""
    ld = res["loading"]
    lines = [
        f"closed-form least squares: validation MSE {res['closed_form_val_mse']:.5f}; target (within 1 %) {res['target_val_mse']:.5f}; "
        f"torch threads {res['torch_threads']}",
        "",
        "| SGD setting | epochs to within 1 % | seconds to within 1 % | samples/s | final val MSE | epochs run | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in res["settings"]:
        lines.append(f"| {s['setting']} | {s['epochs_to_1pct'] or 'not reached'} | {s['seconds_to_1pct'] or '–'} | "
                     f"{s['samples_per_s']:,} | {s['final_val_mse']:.5f} | {s['epochs_run']} | {s['peak_rss_mb']:.0f} |")  # fmt: skip
    v = res["views"]
    lines += [
        "",
        f"- data set: {ld['dataset_mb']} MiB (X float32 + y). from_arrays: {ld['from_arrays_s_under_tracemalloc']} s under tracemalloc, keeps {ld['from_arrays_kept_mb']} MiB, "
        f"peak {ld['from_arrays_peak_mb']} MiB (tracemalloc), shares the caller's array: {ld['from_arrays_shares_input']}",
        f"- split (train/validation): {ld['split_s']} s, keeps {ld['split_kept_mb']} MiB, peak {ld['split_peak_mb']} MiB",
        f"- train(): {v['from_numpy_calls_over_1MB']} torch.from_numpy calls on arrays > 1 MiB ({v['bytes_viewed_mb']} MiB), "
        f"all views (tensor data pointer == array data pointer): {v['all_views']}",
        f"- RSS: start {res['rss_start_mb']:.0f} MiB, after generating {res['rss_after_generating_mb']:.0f} MiB, "
        f"after loading (caller's arrays freed) {res['rss_after_loading_mb']:.0f} MiB",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
