"""Bring-your-own-model benchmark: the goals of issue 13 side by side, in one run, for a ≥ 10 M-parameter model.

The model is examples/byom.py's TokenEncoder (int64 token ids → class logits; every projection an nn.Linear; random
weights; 10.5 M parameters at the default size). It is imported with `ai.import_model` (quantization auto, compile
auto: the per-host choice), packaged, and served by a real TorchServe; separately, the same model saved with
torch.export.save goes through `aiaas import` → `aiaas package` as a user would run them, timed end to end.
Every timing uses one torch thread, as a served worker does (ServingConfig.threads). Prints the host's CPU and
vector ISA, then the goals table.

    .venv/bin/python benchmarks/import.py --out docs/bench/import.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aiaas_torch import bench
from aiaas_torch.archive import ServingConfig, package
from aiaas_torch.client import Client
from aiaas_torch import serving as server
from aiaas_torch.handlers import integrity
from aiaas_torch.importer import import_model
from aiaas_torch.making import export_module
from aiaas_torch.optimize import median_timer
from aiaas_torch.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import byom  # noqa: E402

BATCH = 32
SEQ = 32


def rel_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Return RMS(a − b) / RMS(b)."""
    a, b = a.double(), b.double()
    return float(torch.sqrt(torch.mean((a - b) ** 2)) / torch.sqrt(torch.mean(b**2)))


def cli(*args: str) -> tuple[float, float]:
    """Run `aiaas ARGS` in a fresh process; returns (wall seconds, CPU seconds of it and its children such as g++)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "aiaas_torch.cli", *args], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> int:
    """Run the benchmark and print the goals table; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of served load (c = 8)")
    ap.add_argument("--layers", type=int, default=3, help="encoder layers (3: 10.5 M parameters)")
    a = ap.parse_args()

    host = bench.machine_info()
    host["isa_class"] = integrity.isa_class(integrity.cpu_flags())
    print(f"host: {host['cpu']}, {host['cores']} cores, ISA class {host['isa_class']}, load {host['loadavg_1min']}, "
          f"torch {host['torch']}, torchao {host['torchao']}")  # fmt: skip
    torch.manual_seed(0)
    model = byom.TokenEncoder(layers=a.layers, seq=SEQ).eval()
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, 2000, (64, SEQ), generator=g)
    x = torch.randint(0, 2000, (BATCH, SEQ), generator=g)
    res: dict = {"host": host, "parameters": n_params, "batch": BATCH, "seq": SEQ, "threads": 1}
    print(f"model: TokenEncoder, {n_params:,} parameters, int64 tokens [N, {SEQ}]")

    with tempfile.TemporaryDirectory(prefix="aiaas-import-bench-") as tmp:
        tmp = Path(tmp)
        # the user's path on the command line: torch.export.save → aiaas import → aiaas package
        torch.export.save(export_module(model, (calib,)), str(tmp / "enc.pt2"))
        np.savez(tmp / "cal.npz", tokens=calib.numpy())
        s_import, cpu_import = cli("import", str(tmp / "enc.pt2"), "--out", str(tmp / "cli_run"), "--calibration", str(tmp / "cal.npz"))
        s_package, cpu_package = cli("package", str(tmp / "cli_run"), "--name", "enc_cli", "--model-store", str(tmp / "cli_store"))
        res["cli_import_s"], res["cli_package_s"] = round(s_import, 1), round(s_package, 1)
        res["cli_cpu_s"] = round(cpu_import + cpu_package, 1)
        print(f"aiaas import {s_import:.1f} s + aiaas package {s_package:.1f} s wall; {cpu_import + cpu_package:.0f} CPU s "
              f"(load average {os.getloadavg()[0]:.1f})")  # fmt: skip

        # the Python path from the nn.Module: quantization auto and the per-host program choice
        t0 = time.perf_counter()
        out = import_model(model, calib[:2], tmp / "run", calibration={"tokens": calib.numpy()})
        res["api_import_s"] = round(time.perf_counter() - t0, 1)
        print(out.report.summary())
        print(out.optimization_summary())
        local = load_run(out.run_dir)
        name, file, chosen = local.programs.pick(BATCH)
        res["chosen"] = {"candidate": name, "file": file}
        torch.set_num_threads(1)
        with torch.inference_mode():
            eager_out, chosen_out = model(x), chosen(x)
            res["chosen_rel_rmse"] = rel_rmse(chosen_out, eager_out)
            t_eager = median_timer("eager", BATCH, model, x, math.inf)
            t_chosen = median_timer(name, BATCH, chosen, x, math.inf)
        res["eager_ms"], res["chosen_ms"] = round(t_eager * 1e3, 2), round(t_chosen * 1e3, 2)
        print(f"batch {BATCH}, 1 thread: float eager {t_eager * 1e3:.1f} ms, {name} ({file}) {t_chosen * 1e3:.1f} ms")

        store, home = tmp / "store", tmp / "home"
        mar = package(out.run_dir, "enc", "1.0", store, serving=ServingConfig(workers=1, batch_size=1, max_batch_delay_ms=0)).path
        info = server.start_server(home, store, {"enc": mar.name}, free_ports=True, ready_timeout=300)
        try:
            body = {"inputs": [{"name": "tokens", "shape": [BATCH, SEQ], "datatype": "INT64", "data": x.ravel().tolist()}]}
            with Client(home=home, request_timeout=60) as c:
                served = torch.tensor(c.predict("enc", body)["outputs"][0]["data"]).reshape(BATCH, -1)
            res["served_vs_eager_rel_rmse"] = rel_rmse(served, eager_out)
            res["served_vs_chosen_rel_rmse"] = rel_rmse(served, chosen_out)
            target = bench.served_target(home, "enc", json.dumps(body).encode())
            levels = bench.measure_warmed(target, 10.0, concurrency=(8,), duration=a.duration, warmup=2.0,
                                          server_pids=[info.pid], request_timeout=60.0, progress=False)  # fmt: skip
        finally:
            server.stop_server(home)
        lv = levels[0]
        res["served_rps"], res["served_errors"] = lv.rps, lv.errors
        res["served_samples_per_s"] = lv.rps * BATCH
        res["inprocess_samples_per_s"] = BATCH / t_chosen
        res["machine_cpu_percent"] = lv.machine_cpu_percent

    float_chosen = local.programs.pick(BATCH)[0].startswith("float")
    rows = [
        ("served answers vs the user's own eager module (rel. RMSE, same inputs)",
         "≤ 1e-5 (float program)" if float_chosen else "≤ 2 % (reduced precision)",
         f"{res['served_vs_eager_rel_rmse']:.2e}", res["served_vs_eager_rel_rmse"] <= (1e-5 if float_chosen else 0.02)),
        (f"{n_params / 1e6:.1f} M model, chosen program ({name}) vs float eager, batch {BATCH}",
         "≥ 1.0× (int8 ≥ 2× on AVX-512)", f"{t_eager / t_chosen:.2f}×", t_eager / t_chosen >= 1.0),
        ("  its error against float eager", "≤ 2 % rel.", f"{res['chosen_rel_rmse']:.2e}", res["chosen_rel_rmse"] <= 0.02),
        (f"served (c = 8, batch {BATCH} per request) vs in-process, same program",
         "≥ 0.9×", f"{res['served_samples_per_s']:.0f} / {res['inprocess_samples_per_s']:.0f} samples/s = "
                   f"{res['served_samples_per_s'] / res['inprocess_samples_per_s']:.2f}×",
         res["served_samples_per_s"] / res["inprocess_samples_per_s"] >= 0.9),
        ("aiaas import → packaged (CLI, .pt2)", "≤ 180 s on 2 cores",
         f"{s_import + s_package:.0f} s wall, {res['cli_cpu_s']:.0f} CPU s", s_import + s_package <= 180),
    ]  # fmt: skip
    res["goals"] = [{"figure": f, "goal": g, "measured": m, "met": bool(ok)} for f, g, m, ok in rows]
    print(f"\ngoals on {host['cpu']} ({host['isa_class']}, {host['cores']} cores, load {host['loadavg_1min']}):")
    print(f"| figure | goal | measured | met |\n|---|---|---|---|")
    for f, g, m, ok in rows:
        print(f"| {f} | {g} | {m} | {'yes' if ok else 'NO'} |")
    print(f"(python import_model of the nn.Module, measured choice and compile: {res['api_import_s']} s; served errors {lv.errors})")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
