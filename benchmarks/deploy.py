"""Live-update benchmark (issue 16): deploy and roll back a model under 16 concurrent clients; print the goal table.

Starts TorchServe with --allow-deploy serving `lin` 1.0 (y = 2x), runs 16 client threads (one httpx client each,
closed loop, no pause) against /predictions/lin, measures a steady window, deploys `lin` 2.0 (y = 3x), keeps the
load on, rolls back, and stops. Every answer carries the version that computed it, so the switch is observable.

    .venv/bin/python benchmarks/deploy.py            # ≈ 2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from aiaas_torch import serving as server
from aiaas_torch.archive import ServingConfig, package
from aiaas_torch.bench import percentile
from aiaas_torch.bench.cpu import machine_info
from aiaas_torch.handlers.integrity import cpu_flags, isa_class

CLIENTS = 16


def slope_run(root: Path, slope: float) -> Path:
    """Return a run directory of y = slope·x on x = 1..5 (float program only)."""
    from aiaas_torch.data import from_arrays
    from aiaas_torch.export import export_run
    from aiaas_torch.quantize import QuantConfig
    from aiaas_torch.train import TrainConfig, train

    x = np.arange(1, 6, dtype=np.float64)
    result = train(from_arrays(x.reshape(-1, 1), slope * x, ["x"], target="y"), TrainConfig(val_fraction=0.0, progress=False))
    return export_run(result, root / f"y{slope:g}x", QuantConfig("none"), compile=False).run_dir


def load(url: str, token: str, stop: threading.Event, out: list, lock: threading.Lock) -> None:
    """Send {"instances": [[10]]} until stopped; append (sent, answered, status, version) per request."""
    with httpx.Client(timeout=60, trust_env=False) as http:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                r = http.post(url, json={"instances": [[10.0]]}, headers={"Authorization": f"Bearer {token}"})
                status, version = r.status_code, (r.json().get("version", "") if r.status_code == 200 else "")
            except httpx.HTTPError:
                status, version = -1, ""
            with lock:
                out.append((sent, time.monotonic(), status, version))


def p99_ms(rows: list, start: float, end: float) -> float:
    """Return the p99 latency (ms) of the requests sent in [start, end)."""
    return percentile([(a - s) * 1000 for s, a, _, _ in rows if start <= s < end], 99)


def switch_s(rows: list, returned: float, until: float, old: str) -> float:
    """Return how long after `returned` the last request (sent before `until`) answered by `old` was sent (0: none)."""
    late = [s - returned for s, _, _, v in rows if v == old and returned < s < until]
    return max(late, default=0.0)


def main() -> None:
    """Run the benchmark and print the goal table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steady", type=float, default=10.0, help="seconds of steady load before the deploy (default 10)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="aiaas-deploy-bench-") as tmp:
        root = Path(tmp)
        cfg = ServingConfig(workers=1, batch_size=8, max_batch_delay_ms=2)
        v1 = package(slope_run(root, 2.0), "lin", "1.0", root / "store", serving=cfg).path
        v2 = package(slope_run(root, 3.0), "lin", "2.0", root / "new", serving=cfg).path
        home = root / "home"
        info = server.start_server(home, root / "store", {"lin": v1.name}, free_ports=True, ready_timeout=180, allow_deploy=True)
        rows: list = []
        stop, lock = threading.Event(), threading.Lock()
        token = server.read_keys(home)["inference"]
        threads = [threading.Thread(target=load, args=(f"{info.inference_url}/predictions/lin", token, stop, rows, lock))
                   for _ in range(CLIENTS)]  # fmt: skip
        try:
            for t in threads:
                t.start()
            time.sleep(3.0)  # warm-up, not counted
            steady_start = time.monotonic()
            time.sleep(a.steady)
            deploy_start = time.monotonic()
            done = server.deploy("lin", v2, home)
            deployed = time.monotonic()
            time.sleep(3.0)
            rollback_start = time.monotonic()
            server.rollback("lin", home)
            rolled = time.monotonic()
            time.sleep(3.0)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
            server.stop_server(home)
    steady = p99_ms(rows, steady_start, deploy_start)
    during = max(p99_ms(rows, deploy_start, deployed + 1.0), p99_ms(rows, rollback_start, rolled + 1.0))
    figures = {
        "failed_during_deploy_and_rollback": sum(1 for s, _, st, _ in rows if st != 200 and s >= deploy_start),
        "requests": len(rows),
        "switch_after_deploy_s": round(switch_s(rows, deployed, rollback_start, "1.0"), 3),
        "switch_after_rollback_s": round(switch_s(rows, rolled, math.inf, "2.0"), 3),
        "p99_steady_ms": round(steady, 1), "p99_switch_ms": round(during, 1), "p99_ratio": round(during / steady, 2),
        "deploy_steps_s": done.seconds, "rollback_s": round(rolled - rollback_start, 3),
        "host": {**machine_info(), "isa": isa_class(cpu_flags())},
    }  # fmt: skip
    host = figures["host"]
    print(f"host: {host['cpu']} ({host['cores']} cores, ISA {host['isa']}, load {host['loadavg_1min']}); torch "
          f"{host['torch']}, torchserve {host['torchserve']}; {CLIENTS} clients, {len(rows)} requests")
    print(f"deploy steps (s): {done.seconds}; rollback {figures['rollback_s']} s")
    print("| figure | goal | measured | met |\n|---|---|---|---|")
    for label, goal, value, met in [
        ("requests failed while deploy and rollback run", "0", figures["failed_during_deploy_and_rollback"],
         figures["failed_during_deploy_and_rollback"] == 0),
        ("answers switch to the new version within (s after deploy returns)", "1", figures["switch_after_deploy_s"],
         figures["switch_after_deploy_s"] <= 1.0),
        ("... and back after rollback returns (s)", "1", figures["switch_after_rollback_s"], figures["switch_after_rollback_s"] <= 1.0),
        (f"p99 during the switch vs steady ({figures['p99_switch_ms']} vs {figures['p99_steady_ms']} ms)", "≤ 3×",
         f"{figures['p99_ratio']}×", figures["p99_ratio"] <= 3.0),
    ]:  # fmt: skip
        print(f"| {label} | {goal} | {value} | {'yes' if met else 'NO'} |")
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
