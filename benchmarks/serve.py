"""Serving benchmark: the default package, the latency profile and a no-op handler side by side, in one run.

Each configuration packages the same run directory (the origin model y = 2x unless --run-dir) and starts TorchServe
on free loopback ports; all of them run at once, are warmed up, and take turns: each level (c = 1, 8, 32) is measured
--rounds times per server with `aiaas_torch.bench`, so that the ratios compare servers measured minutes apart at
most, not a whole run apart (a shared host's speed drifts by a third within half an hour); the round of median
throughput is reported, and every round's req/s printed. The generator's own ceiling (the same load against a
trivial asyncio responder) is measured in the same run. Prints the table, the ratios and each serving goal as met or
not; writes JSON and a PNG.

    .venv/bin/python benchmarks/serve.py --out-dir docs/bench           # ≈ 6 min on 2 cores
    .venv/bin/python benchmarks/serve.py --cold-start --out-dir docs/bench   # also READY and demo timings
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

from aiaas_torch import bench
from aiaas_torch.archive import ServingConfig, package

HERE = Path(__file__).resolve().parent
NOOP_HANDLER = HERE / "noop_handler.py"
AIAAS = str(Path(sys.executable).parent / "aiaas")

# Candidates measured by --sweep (beside the default and the latency profile).
SWEEP = {
    "w1 b32 d1": ServingConfig(workers=1, batch_size=32, max_batch_delay_ms=1),
    "w2 b8 d1": ServingConfig(workers=2, batch_size=8, max_batch_delay_ms=1),
    "w2 b16 d1": ServingConfig(workers=2, batch_size=16, max_batch_delay_ms=1),
    "w2 b16 d5": ServingConfig(workers=2, batch_size=16, max_batch_delay_ms=5),
    "w2 b1 d0": ServingConfig(workers=2, batch_size=1, max_batch_delay_ms=0),
}


def build_origin(root: Path) -> tuple[Path, dict]:
    """Return the origin run directory (y = 2x, int8 policy, compiled) and how long each step took."""
    from aiaas_torch.data import from_arrays
    from aiaas_torch.export import export_run
    from aiaas_torch.quantize import QuantConfig
    from aiaas_torch.train import TrainConfig, train

    t0 = time.perf_counter()
    x = np.arange(1, 6, dtype=np.float64)
    result = train(from_arrays(x.reshape(-1, 1), 2 * x, ["x"], target="y"), TrainConfig(val_fraction=0.0, progress=False))
    t1 = time.perf_counter()
    exported = export_run(result, root / "origin", QuantConfig("int8"))
    t2 = time.perf_counter()
    package(exported.run_dir, "origin", "1.0", root / "store")
    t3 = time.perf_counter()
    return exported.run_dir, {"train_s": round(t1 - t0, 2), "export_s": round(t2 - t1, 2),
                              "compile_s": round(exported.compile_seconds or 0, 2), "package_s": round(t3 - t2, 2),
                              "total_s": round(t3 - t0, 2)}  # fmt: skip


def goals(report: bench.BenchReport) -> list[dict]:
    """Return each serving goal with the measured figure and whether it is met."""
    out = []

    def goal(name, value, target, ok):
        out.append({"goal": name, "measured": value, "target": target, "met": bool(ok)})

    top = max(lv.concurrency for lv in report.results[0].levels)
    d_top, d_1 = report.level("default", top), report.level("default", 1)
    noop, noop_1 = report.level("no-op", top), report.level("no-op", 1)
    lat_1, noop_lat_1 = report.level("latency", 1), report.level("no-op latency", 1)
    if d_top:
        goal(f"default, c={top}: req/s", round(d_top.rps), "≥ 10,000", d_top.rps >= 10_000)
        if noop and noop.rps:
            goal(f"default / no-op handler, c={top}: req/s", round(d_top.rps / noop.rps, 3), "≥ 0.9", d_top.rps >= 0.9 * noop.rps)
    if d_1:
        goal("default, c=1: p50 ms", d_1.p50_ms, "≤ 2.5", d_1.p50_ms <= 2.5)
        if noop_1 and noop_1.p50_ms:
            goal("default / no-op handler, c=1: p50", round(d_1.p50_ms / noop_1.p50_ms, 3), "≤ 1.15", d_1.p50_ms <= 1.15 * noop_1.p50_ms)
    if lat_1:
        goal("latency profile, c=1: p50 ms", lat_1.p50_ms, "≤ 1.0", lat_1.p50_ms <= 1.0)
        if noop_lat_1 and noop_lat_1.p50_ms:
            goal("latency profile / no-op handler at batch 1, c=1: p50", round(lat_1.p50_ms / noop_lat_1.p50_ms, 3), "≤ 1.10",
                 lat_1.p50_ms <= 1.10 * noop_lat_1.p50_ms)  # fmt: skip
    for r in report.results:
        for lv in r.levels:
            if lv.errors:
                goal(f"{r.label}, c={lv.concurrency}: errors", lv.errors, "0", False)
    return out


def cold_start(run_dir: Path, root: Path, repeats: int = 3) -> dict:
    """Return the wall time of `aiaas serve start` until READY (median of repeats) and of `aiaas demo` end to end."""
    store = root / "cold-store"
    mar = package(run_dir, "origin", "1.0", store)
    ready = []
    for i in range(repeats):
        home = root / f"cold-home-{i}"
        t0 = time.perf_counter()
        subprocess.run([AIAAS, "serve", "start", "--home", str(home), "--model-store", str(store), "--models",
                        f"origin={mar.path.name}", "--free-ports"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        ready.append(time.perf_counter() - t0)
        subprocess.run([AIAAS, "serve", "stop", "--home", str(home)], check=True, stdout=subprocess.DEVNULL)
    t0 = time.perf_counter()
    demo = subprocess.run([AIAAS, "demo", "--json", "--home", str(root / "demo-home"), "--workdir", str(root / "demo-runs"),
                           "--model-store", str(root / "demo-store")], check=True, capture_output=True, text=True)  # fmt: skip
    demo_s = time.perf_counter() - t0
    summary = json.loads(demo.stdout)
    return {"serve_start_to_ready_s": [round(x, 2) for x in ready], "serve_start_to_ready_median_s": round(statistics.median(ready), 2),
            "demo_total_s": round(demo_s, 1), "demo_summary": summary}  # fmt: skip


def main(argv=None) -> int:
    """Run the serving benchmark and print the table, ratios and goals."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default=None, help="run directory to serve (default: build the origin model y = 2x)")
    p.add_argument("--concurrency", default="1,8,32", help="connections per level (default 1,8,32)")
    p.add_argument("--duration", type=float, default=6.0, help="timed window per level and round in s (default 6)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up per level and round in s (default 2)")
    p.add_argument("--rounds", type=int, default=3,
                   help="all servers run at once and take turns, each level measured this many times; the median round "
                        "is reported (default 3; 1: one server after another, as before)")
    p.add_argument("--server-warmup", type=float, default=10.0, help="load before the first level of each server (default 10)")
    p.add_argument("--sweep", action="store_true", help="also measure the candidate configurations in SWEEP")
    p.add_argument("--no-noop", action="store_true", help="skip the no-op handler")
    p.add_argument("--cold-start", action="store_true", help="also time `aiaas serve start` to READY and `aiaas demo`")
    p.add_argument("--max-wait", type=float, default=600.0, help="wait at most this long for 1-min load < 1.0 (default 600 s)")
    p.add_argument("--out-dir", default=None, help="write serve.json and serve.png here")
    a = p.parse_args(argv)
    conc = tuple(int(c) for c in a.concurrency.split(","))
    load = bench.wait_quiet(1.0, a.max_wait, echo=lambda m: print(m, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix="aiaas-serve-bench-") as tmp:
        root = Path(tmp)
        build = None
        run_dir = Path(a.run_dir) if a.run_dir else None
        if run_dir is None:
            print("building the origin run directory (train, export, compile, package) ...", file=sys.stderr, flush=True)
            run_dir, build = build_origin(root)
        configs = {"default": ServingConfig(), "latency": ServingConfig.profile("latency")}
        if a.sweep:
            configs.update(SWEEP)
        handlers = {}
        if not a.no_noop:  # the same archive and config with a handler that answers a fixed body
            configs["no-op"] = ServingConfig()
            configs["no-op latency"] = ServingConfig.profile("latency")
            handlers["no-op"] = handlers["no-op latency"] = NOOP_HANDLER
        report = bench.bench_run_dir(run_dir, configs, handlers=handlers, concurrency=conc, duration=a.duration,
                                     warmup=a.warmup, server_warmup=a.server_warmup, workdir=tmp, rounds=a.rounds)  # fmt: skip
        report.results.append(bench.generator_ceiling(conc, min(a.duration, 5.0), 1.0))
        cold = cold_start(run_dir, root) if a.cold_start else None
    report.machine["loadavg_1min_at_start"] = round(load, 2)
    top = max(conc)
    for label in ("no-op", "latency"):
        d, o = report.level("default", top), report.level(label, top)
        if d and o and o.rps:
            report.ratios[f"default / {label} req/s at c={top}"] = d.rps / o.rps
    for label in ("default", "no-op"):
        lv = report.level(label, top)
        if lv and lv.server_cpu_percent and (us := lv.server_cpu_us_per_request()) is not None:
            report.ratios[f"{label}: server CPU µs per request at c={top}"] = us
            if lv.server_cpu_split and lv.rps:  # where the CPU goes: TorchServe's Java frontend vs the Python workers
                for part, name in (("main", "Java frontend"), ("children", "Python workers")):
                    report.ratios[f"{label}: {name} CPU µs per request at c={top}"] = lv.server_cpu_split[part] * 1e4 / lv.rps
    ceiling = report.results[-1].levels[-1]
    report.ratios[f"generator ceiling req/s at c={top} (trivial server)"] = ceiling.rps
    met = goals(report)
    doc = {**report.to_dict(), "goals": met, "build": build, "cold_start": cold,
           "command": "benchmarks/serve.py " + " ".join(argv if argv is not None else sys.argv[1:])}  # fmt: skip
    print(report.table())
    by_round = report.settings.get("req_per_s_by_round", {})
    for label, levels in by_round.items():
        print(f"- {label}: req/s by round " + "; ".join(f"c={c}: {', '.join(f'{r:,}' for r in rps)}" for c, rps in levels.items()))
    if "default" in by_round and "no-op" in by_round:  # each round's pair was measured minutes apart at most
        pairs = zip(by_round["default"][str(top)], by_round["no-op"][str(top)])
        print(f"- default / no-op req/s at c={top} by round: " + ", ".join(f"{d / o:.2f}" for d, o in pairs if o))
    print()
    for g in met:
        print(f"- {'MET ' if g['met'] else 'NOT MET'}  {g['goal']}: {g['measured']} (goal {g['target']})")
    if build:
        print(f"- origin build: {build}")
    if cold:
        print(f"- cold start: serve start → READY {cold['serve_start_to_ready_s']} s (median {cold['serve_start_to_ready_median_s']}); "
              f"aiaas demo end to end {cold['demo_total_s']} s")  # fmt: skip
    if a.out_dir:
        out = Path(a.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "serve.json").write_text(json.dumps(doc, indent=2) + "\n")
        bench.plot(report, out / "serve.png", title=f"aiaas serving, origin model, {report.machine['cores']} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
