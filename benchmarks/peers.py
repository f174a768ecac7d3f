"""Peer benchmark: our TorchServe package vs FastAPI + uvicorn and LitServe serving the same model, in one run.

The peers live only in a separate benchmark venv (.venv-bench, gitignored), created on first use from
benchmarks/requirements-bench.txt; they are never dependencies of aiaas-torch. That venv sees the project's own
environment (torch, aiaas_torch) through a .pth file placed after its own site-packages, so the peers load the
run directory with aiaas_torch.runs.load_run exactly as our handler does, and the peer packages win any clash.

Same machine, same load generator (aiaas_torch.bench), same body, same concurrency levels, one after another:
    .venv/bin/python benchmarks/peers.py --out-dir docs/bench        # ≈ 6.5 min on 2 cores (+ venv on first use)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx

from aiaas_torch import bench
from aiaas_torch.bench import served
from aiaas_torch.archive import ServingConfig
from aiaas_torch.serving import free_ports

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = REPO / ".venv-bench"
REQUIREMENTS = HERE / "requirements-bench.txt"
NAME = "bench"


def ensure_venv(venv: Path = VENV) -> Path:
    """Return the benchmark venv's python, creating the venv and installing the peers when needed."""
    py = venv / "bin" / "python"
    stamp = venv / ".installed-stamp"
    if not py.exists():
        print(f"creating {venv} (peers only; never the project's runtime)", file=sys.stderr, flush=True)
        subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True)
    if not stamp.exists() or stamp.stat().st_mtime < REQUIREMENTS.stat().st_mtime:
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)], check=True)
        stamp.touch()
    # Let the peers import torch and aiaas_torch from the project's venv, after their own packages.
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    (Path(site) / "aiaas-project-venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return py


def peer_versions(py: Path) -> dict:
    """Return the versions of the peer packages in the benchmark venv."""
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('fastapi', 'uvicorn', 'litserve', 'starlette', 'uvloop', 'httptools', 'pyzmq')}))")  # fmt: skip
    return json.loads(subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True).stdout)


class Peer:
    """A peer server in its own process group on a free loopback port; stopped (the whole group) on exit."""

    def __init__(self, label: str, cmd: list[str], port: int, env: dict, log: Path):
        self.label, self.cmd, self.port, self.env, self.log = label, cmd, port, env, log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Peer":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=HERE, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            self._wait_ready(180.0)
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def url(self) -> str:
        """The prediction URL."""
        return f"http://127.0.0.1:{self.port}/predictions/{NAME}"

    def _wait_ready(self, timeout: float) -> None:
        """Return once a prediction answers 200; RuntimeError with the log's tail if the peer dies or times out."""
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=5.0) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.label} exited ({self.proc.returncode}):\n{self.log.read_text()[-2000:]}")
                try:
                    if c.post(self.url, content=b'{"instances": [[1.0]]}', headers={"Content-Type": "application/json"}).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        raise RuntimeError(f"{self.label} not ready in {timeout:g} s:\n{self.log.read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None and not _group_alive(self.proc.pid):
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)  # our own session: the peer and the workers it forked
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            if not _group_alive(self.proc.pid):
                break
        if self.proc.poll() is None:
            self.proc.wait()


def _group_alive(pgid: int) -> bool:
    """Return True while any process of the group still exists."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def peer_labels(workers: int, ours: ServingConfig) -> dict:
    """Return each peer's table label, naming the setting it ran with."""
    return {
        "fastapi": f"FastAPI + uvicorn ({workers} workers)",
        "litserve": f"LitServe ({workers} workers, defaults: no batching)",
        "litserve-batch": f"LitServe ({workers} workers, batching: max {ours.batch_size}, {ours.max_batch_delay_ms} ms)",
    }


def main(argv=None) -> int:
    """Run ours, FastAPI + uvicorn and LitServe (defaults, and batching on) on the same model; print the table and the ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default=None, help="run directory (default: build the origin model y = 2x)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--server-warmup", type=float, default=10.0, help="unmeasured load before each server's first level")
    p.add_argument("--workers", type=int, default=2, help="worker processes for every server (default 2)")
    p.add_argument("--max-wait", type=float, default=600.0, help="wait at most this long for 1-min load < 1.0")
    p.add_argument("--out-dir", default=None, help="write peers.json and peers.png here")
    a = p.parse_args(argv)
    conc = tuple(int(c) for c in a.concurrency.split(","))
    py = ensure_venv()
    versions = peer_versions(py)
    load = bench.wait_quiet(1.0, a.max_wait, echo=lambda m: print(m, file=sys.stderr, flush=True))
    kw = dict(concurrency=conc, duration=a.duration, warmup=a.warmup, progress=None)
    with tempfile.TemporaryDirectory(prefix="aiaas-peers-") as tmp:
        root = Path(tmp)
        if a.run_dir:
            run_dir = Path(a.run_dir).resolve()
        else:
            sys.path.insert(0, str(HERE))
            from serve import build_origin

            run_dir, _ = build_origin(root)
        ours = ServingConfig(workers=a.workers)
        labels = peer_labels(a.workers, ours)
        report = bench.bench_run_dir(run_dir, {"aiaas (TorchServe)": ours}, name=NAME, server_warmup=a.server_warmup, workdir=tmp, **kw)
        from aiaas_torch.card import read_card

        body = bench.card_body(read_card(run_dir))
        env = {**os.environ, "AIAAS_RUN_DIR": str(run_dir), "AIAAS_MODEL_NAME": NAME, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(HERE)}  # fmt: skip
        # LitServe's batching gets our own default's batch size and delay, so both batch alike.
        batched = [str(ours.batch_size), str(ours.max_batch_delay_ms)]
        peers = {
            labels["fastapi"]: lambda port: [str(py), "-m", "uvicorn", "peer_apps:app", "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(a.workers), "--log-level", "warning", "--no-access-log"],
            labels["litserve"]: lambda port: [str(py), "peer_apps.py", "litserve", str(port), str(a.workers)],
            labels["litserve-batch"]: lambda port: [str(py), "peer_apps.py", "litserve", str(port), str(a.workers), *batched],
        }  # fmt: skip
        for label, cmd in peers.items():
            (port,) = free_ports(1)
            with Peer(label, cmd(port), port, env, root / f"{len(report.results)}.log") as peer:
                levels = bench.measure_warmed(bench.Target(peer.url, body), a.server_warmup, server_pids=[peer.proc.pid], label=label, **kw)
            report.results.append(bench.ConfigResult(label, levels))
    report.machine["loadavg_1min_at_start"] = round(load, 2)
    report.machine["peers"] = versions
    ours_label = report.results[0].label
    for r in report.results[1:]:
        for lv in r.levels:
            o = report.level(ours_label, lv.concurrency)
            if o and lv.rps:
                report.ratios[f"ours / {r.label} req/s at c={lv.concurrency}"] = o.rps / lv.rps
    goals = []
    top = max(conc)
    for label, need in ((labels["fastapi"], 1.3), (labels["litserve-batch"], 2.0)):
        ratio = report.ratios.get(f"ours / {label} req/s at c={top}")
        if ratio is not None:
            goals.append({"goal": f"ours / {label} at c={top}", "measured": round(ratio, 2), "target": f"≥ {need}", "met": ratio >= need})
    print(report.table())
    print()
    for g in goals:
        print(f"- {'MET ' if g['met'] else 'NOT MET'}  {g['goal']}: {g['measured']} (goal {g['target']})")
    if a.out_dir:
        out = Path(a.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        doc = {**report.to_dict(), "goals": goals, "command": "benchmarks/peers.py " + " ".join(argv if argv is not None else sys.argv[1:])}
        (out / "peers.json").write_text(json.dumps(doc, indent=2) + "\n")
        bench.plot(report, out / "peers.png", title=f"same model, same load generator, {report.machine['cores']} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
