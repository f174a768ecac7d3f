"""Quantization benchmark: the float export vs the int8 compiled package, through the real pipeline.

For an MLP 100→512→512→1 and 1024→4096→4096→1 (briefly trained with SGD on generated data): train → export with
QuantConfig("none") and QuantConfig("int8") (both compiled by AOTInductor) → load each run directory's programs
and time one forward at batch 1 and 256 with 1 and 2 torch threads. Reports compile time, weight bytes, relative
RMSE against float, batch invariance, and (unless --no-serve) the served large MLP's throughput at c=32.

    .venv/bin/python benchmarks/quantize.py --out docs/bench/quantize.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aiaas_torch import bench
from aiaas_torch.archive import ServingConfig
from aiaas_torch.data import from_arrays
from aiaas_torch.export import COMPILED, FLOAT_PROGRAM, export_run, load_run
from aiaas_torch.quantize import QuantConfig
from aiaas_torch.train import TrainConfig, train

MODELS = {"small": (100, (512, 512), 4096), "large": (1024, (4096, 4096), 4096)}  # features, hidden, rows


def make_data(d: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (X, y): n standard-normal rows of d features and a smooth nonlinear target."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = 2 * np.sin(X[:, 0]) + X[:, 1] * X[:, 2] + np.tanh(X[:, 3:10].sum(1)) + 0.3 * X[:, 10:20].sum(1)
    return X, (y + rng.normal(0, 0.1, n)).astype(np.float32)


def time_call(fn, x: torch.Tensor, budget_s: float = 1.5, max_iter: int = 2000) -> float:
    """Return the median seconds of fn(x) over a time-bounded loop, after a warm-up."""
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        times = []
        end = time.perf_counter() + budget_s
        while len(times) < 5 or (time.perf_counter() < end and len(times) < max_iter):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def batch_invariance(fn, X: np.ndarray) -> dict:
    """Return how a row's answer depends on its batch: alone vs in 256 rows, and with a neighbour changed."""
    with torch.inference_mode():
        batch = torch.from_numpy(X[:256].copy())
        full = fn(batch).float()
        alone = torch.cat([fn(batch[i : i + 1]).float() for i in range(16)])
        changed = batch.clone()
        changed[1:] *= 100.0  # every other row of the batch becomes very different
        neighbour = fn(changed).float()[0]
    scale = float(full[:16].abs().max()) or 1.0
    return {
        "alone_vs_batch256_max_rel": float((alone - full[:16]).abs().max()) / scale,
        "neighbour_changed_bit_identical": bool(torch.equal(neighbour, full[0])),
    }


def weight_bytes(run_dir: Path, name: str) -> int:
    """Return the size of a model file in the run directory."""
    return (run_dir / name).stat().st_size


def bench_model(label: str, d: int, hidden: tuple, n: int, root: Path, threads: tuple = (1, 2)) -> dict:
    """Return the figures of one MLP: train, export float and int8, time, compare."""
    X, y = make_data(d, n)
    ds = from_arrays(X, y)
    t0 = time.perf_counter()
    result = train(ds, TrainConfig(model="mlp", hidden=hidden, epochs=2, lr=0.01, momentum=0.9, batch_size=256,
                                   val_fraction=0.1, progress=False))  # fmt: skip
    train_s = time.perf_counter() - t0
    runs = {}
    for scheme in ("none", "int8"):
        t0 = time.perf_counter()
        e = export_run(result, root / f"{label}-{scheme}", QuantConfig(scheme), compile=True)
        runs[scheme] = {"dir": e.run_dir, "report": e.report, "compile_s": e.compile_seconds, "export_s": time.perf_counter() - t0}
    programs = {
        "float program (torch.export)": load_run(runs["none"]["dir"], program="float"),
        "float compiled (AOTI)": load_run(runs["none"]["dir"], program="compiled"),
        "int8 compiled (AOTI)": load_run(runs["int8"]["dir"], program="compiled"),
    }
    eval_X = result.eval_X
    out = {
        "model": f"MLP {d}→{'→'.join(map(str, hidden))}→1",
        "parameters": int(sum(p.numel() for p in result.model.parameters())),
        "train_seconds": round(train_s, 1),
        "compile_seconds": {"float": round(runs["none"]["compile_s"], 1), "int8": round(runs["int8"]["compile_s"], 1)},
        "weight_bytes": {
            "float (QuantReport)": runs["int8"]["report"].weight_bytes_before,
            "int8 (QuantReport)": runs["int8"]["report"].weight_bytes_after,
            "float model.pt2": weight_bytes(runs["none"]["dir"], COMPILED),
            "int8 model.pt2": weight_bytes(runs["int8"]["dir"], COMPILED),
            "float model_float.pt2": weight_bytes(runs["none"]["dir"], FLOAT_PROGRAM),
        },
        "rel_rmse_int8_vs_float": runs["int8"]["report"].rel_rmse,
        "layers": [f"{l.name}: {l.decision}" for l in runs["int8"]["report"].layers],
        "latency_ms": {},
        "batch_invariance": {},
    }
    # relative RMSE measured again through the compiled packages, on held-out rows
    with torch.inference_mode():
        xe = torch.from_numpy(np.ascontiguousarray(eval_X[:1024]))
        f = programs["float compiled (AOTI)"]._fn(xe).double()
        q = programs["int8 compiled (AOTI)"]._fn(xe).double()
    out["rel_rmse_int8_vs_float_compiled"] = float(torch.sqrt(((q - f) ** 2).mean()) / torch.sqrt((f**2).mean()))
    saved = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            for b in (1, 256):
                x = torch.from_numpy(np.ascontiguousarray(X[:b]))
                for name, lm in programs.items():
                    out["latency_ms"].setdefault(f"{t} thr, batch {b}", {})[name] = round(1000 * time_call(lm._fn, x), 4)
    finally:
        torch.set_num_threads(saved)
    for name, lm in programs.items():
        out["batch_invariance"][name] = batch_invariance(lm._fn, X)
    out["_run_dirs"] = {k: str(v["dir"]) for k, v in runs.items()}
    return out


def served(run_dirs: dict, duration: float, warmup: float) -> dict:
    """Return the served throughput at c=32 of each run directory under the default ServingConfig."""
    results = {}
    for label, run_dir in run_dirs.items():
        report = bench.bench_run_dir(run_dir, {label: ServingConfig()}, concurrency=(32,), duration=duration,
                                     warmup=warmup, progress=False)  # fmt: skip
        results[label] = report.results[0].levels[0]
    return {k: {"rps": v.rps, "p50_ms": v.p50_ms, "p99_ms": v.p99_ms, "errors": v.errors} for k, v in results.items()}


def table(res: dict) -> str:
    """Return the Markdown tables of one run."""
    lines = []
    for label, m in res["models"].items():
        lines.append(f"**{m['model']}** ({m['parameters']:,} parameters; trained {m['train_seconds']} s; compile float "
                     f"{m['compile_seconds']['float']} s, int8 {m['compile_seconds']['int8']} s)\n")  # fmt: skip
        names = list(next(iter(m["latency_ms"].values())))
        lines.append("| threads, batch | " + " | ".join(f"{n} ms" for n in names) + " | int8 speed-up vs float compiled | vs float program |")
        lines.append("|---" * (len(names) + 3) + "|")
        for k, row in m["latency_ms"].items():
            sp_c = row["float compiled (AOTI)"] / row["int8 compiled (AOTI)"]
            sp_p = row["float program (torch.export)"] / row["int8 compiled (AOTI)"]
            lines.append(f"| {k} | " + " | ".join(f"{row[n]:.3f}" for n in names) + f" | {sp_c:.2f}× | {sp_p:.2f}× |")
        wb = m["weight_bytes"]
        lines.append("")
        lines.append(f"- weights: float {wb['float (QuantReport)']:,} B → int8 {wb['int8 (QuantReport)']:,} B "
                     f"({wb['float (QuantReport)'] / max(1, wb['int8 (QuantReport)']):.2f}× smaller); model.pt2 float "
                     f"{wb['float model.pt2']:,} B vs int8 {wb['int8 model.pt2']:,} B "
                     f"({wb['float model.pt2'] / wb['int8 model.pt2']:.2f}×)")  # fmt: skip
        lines.append(f"- relative RMSE int8 vs float: {m['rel_rmse_int8_vs_float']:.4%} (QuantReport), "
                     f"{m['rel_rmse_int8_vs_float_compiled']:.4%} (compiled packages, 1024 held-out rows)")  # fmt: skip
        for name, inv in m["batch_invariance"].items():
            lines.append(f"- batch invariance, {name}: row alone vs in 256 rows max rel diff {inv['alone_vs_batch256_max_rel']:.2e}; "
                         f"neighbours changed → bit-identical: {inv['neighbour_changed_bit_identical']}")  # fmt: skip
        lines.append(f"- layers: {'; '.join(m['layers'])}\n")
    if res.get("served"):
        lines.append("| served large MLP, c=32, default config | req/s | p50 ms | p99 ms | errors |")
        lines.append("|---|---|---|---|---|")
        for k, v in res["served"].items():
            lines.append(f"| {k} | {v['rps']:,.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['errors']} |")
        f, q = res["served"].get("float"), res["served"].get("int8")
        if f and q and f["rps"]:
            lines.append(f"\nint8 / float served throughput: {q['rps'] / f['rps']:.2f}×")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run the quantization benchmark; print the tables; write JSON with --out."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="small,large", help="which MLPs: small, large (default both)")
    p.add_argument("--no-serve", action="store_true", help="skip the served throughput of the large MLP")
    p.add_argument("--duration", type=float, default=10.0, help="served window per model in s (default 10)")
    p.add_argument("--warmup", type=float, default=5.0, help="served warm-up in s (default 5)")
    p.add_argument("--out", default=None, help="write the JSON result here")
    a = p.parse_args(argv)
    bench.wait_quiet(1.0, 600.0, echo=lambda m: print(m, file=sys.stderr, flush=True))  # 1-min load < 1, ≤ 10 min
    res = {"machine": bench.machine_info(), "command": "benchmarks/quantize.py " + " ".join(argv or sys.argv[1:]), "models": {}}
    with tempfile.TemporaryDirectory(prefix="aiaas-qbench-") as root:
        for label in a.models.split(","):
            d, hidden, n = MODELS[label]
            print(f"[{label}] train, export float and int8, time ...", file=sys.stderr, flush=True)
            res["models"][label] = bench_model(label, d, hidden, n, Path(root))
        big = res["models"].get("large")
        if big and not a.no_serve:
            print("[large] serving float and int8 at c=32 ...", file=sys.stderr, flush=True)
            dirs = big["_run_dirs"]
            res["served"] = served({"float": dirs["none"], "int8": dirs["int8"]}, a.duration, a.warmup)
        for m in res["models"].values():
            m.pop("_run_dirs", None)
    print(table(res))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
