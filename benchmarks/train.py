"""Training benchmark: SGD on a generated 1,000,000 × 20 linear data set against closed-form least squares.

Reports, per SGD setting: epochs and seconds until the validation MSE is within 1 % of the closed-form least-squares
fit (on the same training split), samples/s, and memory: tracemalloc peaks (numpy allocations) while loading and
splitting, the process's peak RSS (ru_maxrss), and whether the tensors training reads are views of the split's arrays
(torch.from_numpy: same data pointer) — i.e. how many times the data set is copied on the way to the optimizer.

    .venv/bin/python benchmarks/train.py --out docs/bench/train.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
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
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
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
