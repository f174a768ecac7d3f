"""Optimization benchmark: the default export (program chosen by measurement) vs a float-only export vs int8 forced.

For an MLP 100→512→512→1 and 1024→4096→4096→1 (briefly trained with SGD on generated data): train → export three
ways — the default (`--quantize auto --compile auto`), float only (`--quantize none`), and int8 forced and compiled
(`--quantize int8 --compile always`) → load each run directory as LocalModel (the handler's choice) and time one
forward at batch 1 and 256 with 1 and 2 torch threads, independently of the export's own timings. Reports the
host's CPU and vector ISA, each export's decision, compile time, weight bytes, relative RMSE against float, batch
invariance, the served large MLP's throughput at c=32 (unless --no-serve), `aiaas train` of the origin example
end to end, and the goals table of issue 10 for this host.

    .venv/bin/python benchmarks/quantize.py --out docs/bench/quantize.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aiaas_torch import bench
from aiaas_torch.archive import ServingConfig
from aiaas_torch.data import from_arrays
from aiaas_torch.export import export_run
from aiaas_torch.runs import load_run
from aiaas_torch.handlers import integrity
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


def time_in_turns(fns: dict, x: torch.Tensor, rounds: int = 5, budget_s: float = 0.3) -> dict:
    """Return each fn's median seconds over `rounds` turns of ≈ budget_s each, so that load drift on a shared host
    falls on every program alike (one program after another once gave two identical programs 0.77×)."""
    samples = {n: [] for n in fns}
    for _ in range(rounds):
        for n, fn in fns.items():
            if samples[n] and samples[n][0] > 5 * min(v[0] for v in samples.values()):
                continue  # 5× slower than the best already: drift cannot change that, and its calls cost seconds
            samples[n].append(time_call(fn, x, budget_s, max_iter=400))
    return {n: statistics.median(v) for n, v in samples.items()}


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


def weight_bytes(run_dir: Path) -> int:
    """Return the bytes of the serving model files of a run directory (compiled packages and the float program)."""
    return sum(p.stat().st_size for p in run_dir.iterdir() if p.suffix == ".pt2")


EXPORTS = {  # label → (QuantConfig, compile)
    "default": (QuantConfig(), "auto"),
    "float only": (QuantConfig("none"), "auto"),
    "int8 forced": (QuantConfig("int8"), "always"),
}


def bench_model(label: str, d: int, hidden: tuple, n: int, root: Path, threads: tuple = (1, 2)) -> dict:
    """Return the figures of one MLP: train, export three ways, time each loaded run directory, compare."""
    X, y = make_data(d, n)
    ds = from_arrays(X, y)
    t0 = time.perf_counter()
    result = train(ds, TrainConfig(model="mlp", hidden=hidden, epochs=2, lr=0.01, momentum=0.9, batch_size=256,
                                   val_fraction=0.1, progress=False))  # fmt: skip
    train_s = time.perf_counter() - t0
    runs = {}
    for name, (quant, compile) in EXPORTS.items():
        print(f"[{label}] export {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        e = export_run(result, root / f"{label}-{name.replace(' ', '-')}", quant, compile=compile)
        runs[name] = {"dir": e.run_dir, "report": e.report, "compile_s": e.compile_seconds, "export_s": time.perf_counter() - t0,
                      "optimization": e.card["optimization"], "notes": e.notes}  # fmt: skip
    programs = {name: load_run(r["dir"]) for name, r in runs.items()}
    out = {
        "model": f"MLP {d}→{'→'.join(map(str, hidden))}→1",
        "parameters": int(sum(p.numel() for p in result.model.parameters())),
        "train_seconds": round(train_s, 1),
        "export_seconds": {k: round(r["export_s"], 1) for k, r in runs.items()},
        "compile_seconds": {k: round(r["compile_s"] or 0.0, 1) for k, r in runs.items()},
        "decision": {k: {"plan": [(p["max_rows"], p["candidate"]) for p in r["optimization"]["plan"]],
                         "reason": r["optimization"]["reason"],
                         "dropped": {n: c["reason"] for n, c in r["optimization"]["candidates"].items() if c["status"] == "dropped"}}
                     for k, r in runs.items()},  # fmt: skip
        "notes": {k: r["notes"] for k, r in runs.items() if r["notes"]},
        "weight_bytes": {
            "float (QuantReport)": runs["int8 forced"]["report"].weight_bytes_before,
            "int8 (QuantReport)": runs["int8 forced"]["report"].weight_bytes_after,
            **{f"{k} .pt2 files": weight_bytes(r["dir"]) for k, r in runs.items()},
        },
        "rel_rmse_int8_vs_float": runs["int8 forced"]["report"].rel_rmse,
        "layers": [f"{l.name}: {l.decision}" for l in runs["int8 forced"]["report"].layers],
        "latency_ms": {},
        "batch_invariance": {},
    }
    # relative RMSE measured again through the served programs, on held-out rows
    with torch.inference_mode():
        xe = torch.from_numpy(np.ascontiguousarray(result.eval_X[:1024]))
        f = programs["float only"]._fn(xe).double()
        q = programs["int8 forced"]._fn(xe).double()
    out["rel_rmse_int8_vs_float_compiled"] = float(torch.sqrt(((q - f) ** 2).mean()) / torch.sqrt((f**2).mean()))
    saved = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            for b in (1, 256):
                x = torch.from_numpy(np.ascontiguousarray(X[:b]))
                medians = time_in_turns({name: lm._fn for name, lm in programs.items()}, x)
                out["latency_ms"][f"{t} thr, batch {b}"] = {name: round(1000 * v, 4) for name, v in medians.items()}
    finally:
        torch.set_num_threads(saved)
    for name, lm in programs.items():
        out["batch_invariance"][name] = batch_invariance(lm._fn, X)
    out["_run_dirs"] = {k: str(v["dir"]) for k, v in runs.items()}
    return out


def origin_train_seconds(root: Path) -> float:
    """Return the wall seconds of `aiaas train` on the origin example (x = 1..5, y = 2x), end to end, in a new process."""
    csv = root / "origin.csv"
    csv.write_text("x,y\n" + "".join(f"{x},{2 * x}\n" for x in range(1, 6)))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "aiaas_torch.cli", "train", str(csv), "--target", "y", "--out", str(root / "origin")],
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - t0


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
    h = res["host"]
    lines = [f"host: {h['cpu']}, {res['machine']['cores']} cores, vector ISA {h['isa']} (class {h['isa_class']}), "
             f"torch {res['machine']['torch']}, 1-min load at start {res['machine']['loadavg_1min']}\n"]  # fmt: skip
    for label, m in res["models"].items():
        lines.append(f"**{m['model']}** ({m['parameters']:,} parameters; trained {m['train_seconds']} s; export s "
                     f"{m['export_seconds']}; compile s {m['compile_seconds']})\n")  # fmt: skip
        names = list(next(iter(m["latency_ms"].values())))
        lines.append("| threads, batch | " + " | ".join(f"{n} ms" for n in names) + " | default vs float only | int8 vs float only |")
        lines.append("|---" * (len(names) + 3) + "|")
        for k, row in m["latency_ms"].items():
            lines.append(f"| {k} | " + " | ".join(f"{row[n]:.3f}" for n in names)
                         + f" | {row['float only'] / row['default']:.2f}× | {row['float only'] / row['int8 forced']:.2f}× |")  # fmt: skip
        lines.append("")
        for k, dcs in m["decision"].items():
            plan = "; ".join(f"{'≤ ' + str(r) if r else 'any'} rows → {c}" for r, c in dcs["plan"])
            lines.append(f"- {k} export serves: {plan}" + "".join(f"; {n} dropped ({why})" for n, why in dcs["dropped"].items()
                                                                  if "leaves every layer" not in why))  # fmt: skip
        wb = m["weight_bytes"]
        lines.append(f"- weights: float {wb['float (QuantReport)']:,} B → int8 {wb['int8 (QuantReport)']:,} B "
                     f"({wb['float (QuantReport)'] / max(1, wb['int8 (QuantReport)']):.2f}× smaller); .pt2 files: "
                     + ", ".join(f"{k.replace(' .pt2 files', '')} {v:,} B" for k, v in wb.items() if k.endswith(".pt2 files")))  # fmt: skip
        lines.append(f"- relative RMSE int8 vs float: {m['rel_rmse_int8_vs_float']:.4%} (QuantReport), "
                     f"{m['rel_rmse_int8_vs_float_compiled']:.4%} (served programs, 1024 held-out rows)")  # fmt: skip
        for name, inv in m["batch_invariance"].items():
            lines.append(f"- batch invariance, {name}: row alone vs in 256 rows max rel diff {inv['alone_vs_batch256_max_rel']:.2e}; "
                         f"neighbours changed → bit-identical: {inv['neighbour_changed_bit_identical']}")  # fmt: skip
        lines.append("")
    if res.get("served"):
        lines.append("| served large MLP, c=32, default config | req/s | p50 ms | p99 ms | errors |")
        lines.append("|---|---|---|---|---|")
        for k, v in res["served"].items():
            lines.append(f"| {k} | {v['rps']:,.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['errors']} |")
        lines.append("")
    lines.append(f"**Goals (issue 10) on this host ({h['cpu']}, {h['isa']}, class {h['isa_class']})**\n")
    lines.append("| figure | goal | measured | met |")
    lines.append("|---|---|---|---|")
    lines += [f"| {f} | {g} | {v} | {ok} |" for f, g, v, ok in goals(res)]
    return "\n".join(lines)


def goals(res: dict) -> list:
    """Return the goals table rows (figure, goal, measured, met) for this host."""
    rows, h = [], res["host"]
    for label, m in res["models"].items():
        for b in (1, 256):
            r = m["latency_ms"][f"1 thr, batch {b}"]
            x = r["float only"] / r["default"]
            rows.append((f"default vs `--quantize none` export, {label} MLP, batch {b}, 1 thread", "≥ 0.95×", f"{x:.2f}×", "yes" if x >= 0.95 else "no"))
    sv = res.get("served") or {}
    if "default" in sv and "float only" in sv:
        x = sv["default"]["rps"] / sv["float only"]["rps"]
        rows.append(("served large MLP, default vs float-only export, c = 32", "≥ 0.95×", f"{x:.2f}×", "yes" if x >= 0.95 else "no"))
    big = res["models"].get("large")
    if big:
        r1, r256 = big["latency_ms"]["1 thr, batch 1"], big["latency_ms"]["1 thr, batch 256"]
        x1, x256 = r1["float only"] / r1["int8 forced"], r256["float only"] / r256["int8 forced"]
        if h["isa_class"] == "avx2":
            rows.append(("AVX2 host, large MLP, batch 1, best exportable batch-invariant reduced precision vs float", "≥ 1.5× if one exists",
                         f"int8 dynamic (the only one exportable here) {x1:.2f}×: torchao's int8 kernels have no VNNI on avx2",
                         "no such form yet (spike)"))  # fmt: skip
        else:
            rows.append(("AVX2 host, large MLP, batch 1, reduced precision vs float", "≥ 1.5×", f"n/a: this host is {h['isa_class']}", "n/a"))
        if h["isa_class"] in ("avx512", "avx512_vnni", "amx"):
            rows.append(("AVX-512 host, large MLP, batch 256, int8 vs float", "≥ 2×", f"{x256:.2f}×", "yes" if x256 >= 2 else "no"))
        else:
            rows.append(("AVX-512 host, large MLP, batch 256, int8 vs float", "≥ 2×", f"n/a: this host is {h['isa_class']} (int8 here {x256:.2f}×)", "n/a"))
    if res.get("origin_train_s") is not None:
        t = res["origin_train_s"]
        rows.append(("`aiaas train` of the origin example, end to end", "≤ 8 s wall", f"{t:.1f} s", "yes" if t <= 8 else "no"))
    return rows


def main(argv=None) -> int:
    """Run the optimization benchmark; print the tables and the goals; write JSON with --out."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="small,large", help="which MLPs: small, large (default both)")
    p.add_argument("--no-serve", action="store_true", help="skip the served throughput of the large MLP")
    p.add_argument("--duration", type=float, default=10.0, help="served window per model in s (default 10)")
    p.add_argument("--warmup", type=float, default=5.0, help="served warm-up in s (default 5)")
    p.add_argument("--out", default=None, help="write the JSON result here")
    a = p.parse_args(argv)
    bench.wait_quiet(1.0, 600.0, echo=lambda m: print(m, file=sys.stderr, flush=True))  # 1-min load < 1, ≤ 10 min
    from aiaas_torch.making import vector_isa

    host = {"cpu": integrity.cpu_model_name(), "isa": vector_isa(), "isa_class": integrity.isa_class(integrity.cpu_flags())}
    res = {"machine": bench.machine_info(), "host": host, "command": "benchmarks/quantize.py " + " ".join(argv or sys.argv[1:]), "models": {}}
    with tempfile.TemporaryDirectory(prefix="aiaas-qbench-") as root:
        print("[origin] aiaas train end to end ...", file=sys.stderr, flush=True)
        res["origin_train_s"] = round(origin_train_seconds(Path(root)), 2)
        for label in a.models.split(","):
            d, hidden, n = MODELS[label]
            print(f"[{label}] train, export three ways, time ...", file=sys.stderr, flush=True)
            res["models"][label] = bench_model(label, d, hidden, n, Path(root))
        big = res["models"].get("large")
        if big and not a.no_serve:
            print("[large] serving the default and the float-only export at c=32 ...", file=sys.stderr, flush=True)
            dirs = big["_run_dirs"]
            res["served"] = served({"default": dirs["default"], "float only": dirs["float only"]}, a.duration, a.warmup)
        for m in res["models"].values():
            m.pop("_run_dirs", None)
    print(table(res))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
