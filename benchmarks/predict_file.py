"""Whole-file prediction benchmark: `aiaas predict --file` on a generated N × 20 CSV, locally and through a server.

Prints the host (CPU, ISA class, cores, load), then for each run the seconds of the whole command (Python start and
imports included) and of predicting (as the command reports it), rows/s of predicting, the command's CPU seconds
(user + system: on a shared host, its work apart from waiting) and its peak RSS (os.wait4's figures of that child
alone: with a parser process, the larger of the two, so its own peak and their sum are printed too):
- local: `aiaas predict --local RUN_DIR --file rows.csv --out predictions.csv`, a linear model (20 → 1);
- local at --scale × the rows (the same lines repeated; goal: peak RSS within 10 % of the 1× run);
- server: `aiaas predict NAME --file rows.csv --concurrency C` against a TorchServe started here (--server-rows
  rows of the same kind; the TorchServe processes' own memory is not counted).
Goals (issue 15): local 1,000,000 × 20 ≤ 10 s on 2 cores, peak RSS ≤ 400 MB; server ≥ 100,000 rows/s at C = 8.

    nice .venv/bin/python benchmarks/predict_file.py --rows 1000000 --scale 10 --server-rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aiaas_torch.archive import ServingConfig, package
from aiaas_torch.data import from_arrays
from aiaas_torch.export import export_run
from aiaas_torch.handlers import integrity
from aiaas_torch.quantize import QuantConfig
from aiaas_torch.train import TrainConfig, train

FEATURES = 20


def write_csv(path: Path, rows: int, seed: int = 0) -> int:
    """Write rows × 20 standard-normal values (6 decimals) with a header; returns the file's size in bytes."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write(",".join(f"f{i}" for i in range(FEATURES)) + "\n")
        for start in range(0, rows, 200_000):
            np.savetxt(f, rng.normal(size=(min(200_000, rows - start), FEATURES)), fmt="%.6f", delimiter=",")
    return path.stat().st_size


def linear_run(root: Path) -> Path:
    """Return the run directory of a linear model trained on 5,000 rows of the same kind (float program: no compile)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5_000, FEATURES))
    ds = from_arrays(X, X @ rng.normal(size=FEATURES) + 0.5, [f"f{i}" for i in range(FEATURES)], target="y")
    result = train(ds, TrainConfig(model="linear", epochs=20, val_fraction=0.0, progress=False))
    return export_run(result, root / "linear", QuantConfig("none"), compile=False).run_dir


def repeat_body(src: Path, dst: Path, times: int) -> int:
    """Write src's header and then its data lines `times` over to dst; returns dst's size in bytes."""
    with open(src, "rb") as f, open(dst, "wb") as out:
        out.write(f.readline())
        start = f.tell()
        for _ in range(times):
            f.seek(start)
            while block := f.read(1 << 24):
                out.write(block)
    return dst.stat().st_size


def timed(args: list[str]) -> dict:
    """Return the seconds (the whole command, and predicting as the command reports it) and the peak RSS (MB) of
    one `aiaas ... --json` command run as a child process; raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "aiaas_torch.cli", *args, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()  # small: the JSON report, at most an error line on stderr
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not the largest of all children so far
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"aiaas {' '.join(args)} failed ({proc.returncode}): {err.strip()[-500:]}")
    return {"command_s": round(seconds, 2), "predict_s": round(json.loads(out)["seconds"], 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),  # on a shared host: the work, apart from waiting
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), **_rss_sum(usage.ru_maxrss / 1024, json.loads(out))}


def _rss_sum(peak: float, report: dict) -> dict:
    """Return the parser process's own peak RSS (MB) and its sum with the command's, when a parser process ran.

    os.wait4's peak covers the command and its waited-for parser as the larger of the two, not their sum: when the
    command's is the larger, the sum is exact; otherwise it is an upper bound (the command's own is at most that).
    """
    parser = report.get("parser_peak_rss_mb")
    if parser is None:
        return {}
    return {"parser_peak_rss_mb": parser, "peak_rss_sum_mb": round(peak + parser, 1), "sum_exact": peak > parser}


def main() -> None:
    """Run the benchmark and print one JSON document of figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--scale", type=int, default=10, help="also run locally at this many times the rows (0: skip)")
    ap.add_argument("--server-rows", type=int, default=1_000_000, help="rows sent through the server (0: skip)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="TorchServe workers of the served model")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args()
    host = {"cpu": integrity.cpu_model_name(), "isa_class": integrity.isa_class(integrity.cpu_flags()),
            "cores": os.cpu_count(), "load_1min_at_start": round(os.getloadavg()[0], 2)}
    print(f"host: {host}", flush=True)
    figs: dict = {"host": host, "runs": []}
    with tempfile.TemporaryDirectory(prefix="aiaas-predict-file-") as tmp:
        root = Path(tmp)
        run = linear_run(root)
        base = root / "rows.csv"
        write_csv(base, a.rows)
        for times in [1] + ([a.scale] if a.scale else []):
            src = base if times == 1 else root / f"rows{times}x.csv"
            size = src.stat().st_size if times == 1 else repeat_body(base, src, times)
            rows = a.rows * times
            r = timed(["predict", "--local", str(run), "--file", str(src), "--out", str(root / "pred.csv")])
            r.update(kind="local", rows=rows, file_mb=round(size / 2**20, 1), rows_per_s=round(rows / r["predict_s"]))
            figs["runs"].append(r)
            print(json.dumps(r), flush=True)
            if times != 1:
                src.unlink()
        if a.server_rows:
            from aiaas_torch import serving

            src = root / "server.csv"
            size = write_csv(src, a.server_rows)
            store = root / "store"
            mar = package(run, "linear", "1.0", store, serving=ServingConfig(workers=a.workers, batch_size=a.concurrency,
                                                                               max_batch_delay_ms=5)).path
            home = root / "home"
            serving.start_server(home, store, [f"linear={mar.name}"], free_ports=True, ready_timeout=300)
            try:
                warm = root / "warm.csv"
                write_csv(warm, 20_000, seed=2)  # the JVM needs load before its timings settle
                timed(["predict", "linear", "--home", str(home), "--file", str(warm), "--out", str(root / "w.csv"),
                       "--concurrency", str(a.concurrency)])
                r = timed(["predict", "linear", "--home", str(home), "--file", str(src), "--out", str(root / "pred.csv"),
                           "--concurrency", str(a.concurrency)])
            finally:
                serving.stop_server(home)
            r.update(kind=f"server c={a.concurrency} workers={a.workers}", rows=a.server_rows,
                     file_mb=round(size / 2**20, 1), rows_per_s=round(a.server_rows / r["predict_s"]))
            figs["runs"].append(r)
            print(json.dumps(r), flush=True)
    locals_ = [r for r in figs["runs"] if r["kind"] == "local"]
    if len(locals_) == 2:
        key = "peak_rss_sum_mb" if "peak_rss_sum_mb" in locals_[0] else "peak_rss_mb"
        figs["rss_growth_at_scale"] = round(locals_[1][key] / locals_[0][key] - 1, 3)
        print(f"peak RSS at {a.scale}x the rows: {figs['rss_growth_at_scale']:+.1%} of the 1x run", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(figs, indent=2) + "\n")


if __name__ == "__main__":
    main()
