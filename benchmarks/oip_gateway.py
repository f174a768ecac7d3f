"""What the Open Inference gateway (`aiaas serve start --oip`) costs per request, against TorchServe's native /v2 path.

One TorchServe serves the origin model (y = 2x, default ServingConfig) with the gateway in front of it; the same
v2 JSON request is measured at c = 1 and c = 32 natively and through the gateway (closed loop,
`aiaas_torch.bench.measure`), after a warm-up of both. Prints the host (CPU, cores, vector ISA), the table and the
gateway's added latency and CPU per request. Needs the `oip` extra (kserve).

    .venv/bin/python benchmarks/oip_gateway.py            # ≈ 2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from aiaas_torch import bench
from aiaas_torch import serving as server
from aiaas_torch.archive import package

BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [6.0]}]}).encode()


def _origin(root: Path) -> Path:
    """Return the store holding origin-1.0.mar (y = 2x, compiled)."""
    from aiaas_torch.data import from_arrays
    from aiaas_torch.export import export_run
    from aiaas_torch.quantize import QuantConfig
    from aiaas_torch.train import TrainConfig, train

    x = np.arange(1, 6, dtype=np.float64)
    result = train(from_arrays(x.reshape(-1, 1), 2 * x, ["x"], target="y"), TrainConfig(val_fraction=0.0, progress=False))
    run = export_run(result, root / "origin", QuantConfig("int8")).run_dir
    package(run, "origin", "1.0", root / "store")
    return root / "store"


def main() -> int:
    """Measure and print; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds counted per level (default 10)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each level (default 3)")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    a = ap.parse_args()
    from aiaas_torch.making import vector_isa

    host = {**bench.machine_info(), "vector_isa": vector_isa()}
    print(f"host: {host['cpu']}, {host['cores']} cores, vector ISA {host['vector_isa']}, load {host['loadavg_1min']}")
    with tempfile.TemporaryDirectory(prefix="aiaas-oip-bench-") as tmp:
        root = Path(tmp)
        info = server.start_server(root / "home", _origin(root), ["origin=origin-1.0.mar"], free_ports=True, oip=True)
        try:
            auth = {"Authorization": f"Bearer {server.read_keys(info.home)['inference']}"}
            targets = {
                "native": (bench.Target(f"{info.inference_url}/v2/models/origin/infer", BODY, auth), [info.pid]),
                "gateway": (bench.Target(f"{info.gateway_url}/v2/models/origin/infer", BODY, auth), [info.pid, info.gateway_pid]),
            }
            for target, _ in targets.values():  # JIT and caches of both paths, before anything is counted
                bench.measure(target, (8,), duration=5.0, warmup=5.0, progress=False)
            levels = {label: bench.measure(t, (1, 32), duration=a.duration, warmup=a.warmup, server_pids=pids, progress=False, label=label)
                      for label, (t, pids) in targets.items()}  # fmt: skip
        finally:
            server.stop_server(info.home)
    print(f"{'path':8} {'c':>3} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'server CPU µs/req':>18} {'errors':>6}")
    for label, results in levels.items():
        for lv in results:
            us = lv.server_cpu_us_per_request()
            print(f"{label:8} {lv.concurrency:>3} {lv.rps:>8.0f} {lv.p50_ms:>7.2f} {lv.p99_ms:>7.2f} {us or float('nan'):>18.0f} {lv.errors:>6}")
    summary = []
    for n, g in zip(levels["native"], levels["gateway"]):
        row = {"concurrency": n.concurrency, "native_rps": round(n.rps), "gateway_rps": round(g.rps),
               "throughput_ratio": round(g.rps / n.rps, 3) if n.rps else None, "added_p50_ms": round(g.p50_ms - n.p50_ms, 2),
               "added_cpu_us_per_request": round((g.server_cpu_us_per_request() or 0) - (n.server_cpu_us_per_request() or 0))}  # fmt: skip
        summary.append(row)
        print(f"gateway at c={row['concurrency']}: {row['gateway_rps']} vs {row['native_rps']} req/s ({row['throughput_ratio']:.0%} of native), "
              f"+{row['added_p50_ms']} ms p50, +{row['added_cpu_us_per_request']} µs server CPU per request")  # fmt: skip
    if a.out:
        a.out.write_text(json.dumps({"host": host, "summary": summary,
                                     "levels": {k: [vars(lv) for lv in v] for k, v in levels.items()}}, indent=2, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
