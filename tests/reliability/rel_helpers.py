"""Helpers for the reliability tests: real run directories, worker snapshots, process bookkeeping, load, figures.

Every process these tests signal is found through our own ServerInfo (its Java pid and that pid's children),
never by name, so TorchServe instances and benchmarks run by someone else on this machine are never touched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil

from aiaas_torch import serving as server
from aiaas_torch.data import from_arrays
from aiaas_torch.export import export_run
from aiaas_torch.quantize import QuantConfig
from aiaas_torch.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
HANG_HANDLER = FIXTURES / "hang_handler.py"
HANG_SENTINEL = -7777.0  # tests/fixtures/hang_handler.SENTINEL
HANG_TIMEOUT_S = 2  # responseTimeout of the shared server's `hang` model
HANG_MARK = "hang_handler: hanging on a sentinel request"  # tests/fixtures/hang_handler.HANG_MARK, logged per hang
BATCH_PROBE_HANDLER = FIXTURES / "batch_probe_handler.py"
PROBE_BATCH, PROBE_DELAY_MS = 8, 2000  # batchSize and maxBatchDelay of the shared server's `batch8` model
PROBE_SIZE_HEADER, PROBE_ID_HEADER = "X-Aiaas-Batch-Size", "X-Aiaas-Batch-Id"  # set by tests/fixtures/batch_probe_handler.py
FEATURES = ["a", "b", "c"]
TS_MARKS = ("torchserve", "model_service_worker", "org.pytorch.serve.ModelServer")


# --------------------------------------------------------------------------------------------- models


def linear_run(run_dir: Path, weights=(1.5, -2.0, 0.5), bias: float = 3.0, seed: int = 0) -> Path:
    """Return a run directory of a 3-feature linear regression (float program only, no compile: fast)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 3))
    y = X @ np.asarray(weights) + bias
    ds = from_arrays(X, y, FEATURES, target="t")
    result = train(ds, TrainConfig(epochs=300, lr=0.1, progress=False))
    return export_run(result, run_dir, QuantConfig("none"), compile=False).run_dir


def close(got: float, want: float) -> bool:
    """Return True when a served value equals the local one up to float32 noise."""
    return math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-4)


# --------------------------------------------------------------------------------------------- management API


def keys(home: Path) -> dict:
    """Return the instance's current token keys (TorchServe may rotate them)."""
    return server.read_keys(home)


def workers(info: server.ServerInfo, name: str, version: str | None = None) -> list[tuple[str, int, str]]:
    """Return [(worker id, pid, status)] of NAME[/VERSION] from the management API, sorted by id."""
    path = f"/models/{name}" + (f"/{version}" if version else "")
    r = httpx.get(info.management_url + path, headers={"Authorization": f"Bearer {keys(info.home)['management']}"},
                  timeout=10, trust_env=False)  # fmt: skip
    r.raise_for_status()
    out = []
    for v in r.json():
        for w in v.get("workers", []):
            out.append((str(w.get("id")), int(w.get("pid") or -1), str(w.get("status"))))
    return sorted(out)


def all_ready(info: server.ServerInfo, name: str, count: int) -> bool:
    """Return True when NAME has `count` workers, all READY with a live pid."""
    try:
        ws = workers(info, name)
    except (httpx.HTTPError, ValueError):
        return False
    return len(ws) == count and all(s == "READY" and pid > 0 for _, pid, s in ws)


def wait_ready(info: server.ServerInfo, name: str, count: int, timeout: float, exclude_pid: int | None = None) -> float:
    """Return the seconds until NAME has `count` READY workers (none with exclude_pid); raise on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            ws = workers(info, name)
        except (httpx.HTTPError, ValueError):
            ws = []
        if len(ws) == count and all(s == "READY" and pid > 0 and pid != exclude_pid for _, pid, s in ws):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{name}: workers not READY within {timeout} s: {ws}")


def own_worker_pid(info: server.ServerInfo, name: str) -> int:
    """Return the pid of one READY worker of NAME, checked to be a child of OUR Java process."""
    ours = {c.pid for c in psutil.Process(info.pid).children(recursive=True)}
    for _, pid, status in workers(info, name):
        if status == "READY" and pid in ours:
            return pid
    raise AssertionError(f"no READY worker of {name} among the children of pid {info.pid}")


# --------------------------------------------------------------------------------------------- client attempts


class CountingTransport:
    """Counts a Client's POST attempts, and its failed ones by kind (HTTP 5xx, transport errors), by wrapping the
    call its retry loop makes for each attempt. One per Client, so per thread: no lock."""

    def __init__(self, client):
        self._request = client._http.request
        self.posts = 0
        self.failed: dict[str, int] = {}
        client._http.request = self

    def __call__(self, method: str, *args, **kwargs) -> httpx.Response:
        """Return the wrapped call's response (or raise its error), counting a POST and whether it failed."""
        if method != "POST":  # e.g. the describe that tells a timeout from a crash
            return self._request(method, *args, **kwargs)
        self.posts += 1
        try:
            r = self._request(method, *args, **kwargs)
        except httpx.TransportError as e:
            self._failed(type(e).__name__)
            raise
        if r.status_code >= 500:
            self._failed(f"HTTP {r.status_code}")
        return r

    def _failed(self, what: str) -> None:
        self.failed[what] = self.failed.get(what, 0) + 1


# --------------------------------------------------------------------------------------------- processes


def group_pids(info: server.ServerInfo) -> set[int]:
    """Return the pids of the launcher, the Java server and its workers of one instance."""
    pids = {info.pid, info.pgid}
    try:
        pids |= {c.pid for c in psutil.Process(info.pid).children(recursive=True)}
    except psutil.Error:
        pass
    return pids


def kill_leftovers(pids: set[int]) -> list[int]:
    """SIGKILL whichever of these pids still run TorchServe code (never by name); returns those killed."""
    killed = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and any(m in " ".join(proc.cmdline()) for m in TS_MARKS):
                proc.kill()
                killed.append(pid)
        except psutil.Error:
            pass
    return killed


@contextmanager
def running(home: Path, store: Path, archives: dict):
    """Yield the ServerInfo of a TorchServe started in HOME serving archives ({name: .mar path}, in store); stop it
    afterwards and SIGKILL whatever of it (its pids when it started and when it stops) survives."""
    info = server.start_server(home, store, {name: mar.name for name, mar in archives.items()}, free_ports=True, ready_timeout=180)
    pids = group_pids(info)
    try:
        yield info
    finally:
        pids |= group_pids(info)
        try:
            server.stop_server(home, timeout=10)
        finally:
            kill_leftovers(pids)


def stop_instance(home: Path, info: server.ServerInfo | None) -> None:
    """Stop the instance of HOME and SIGKILL anything of it that survived (by pid from its ServerInfo)."""
    pids = group_pids(info) if info is not None else set()
    try:
        server.stop_server(home, timeout=10)
    finally:
        kill_leftovers(pids)


@contextmanager
def reaping(home: Path):
    """Stop whatever a server.start in HOME left running, even a start that should have failed but did not."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        yield
    finally:
        try:
            info = server.load_info(home)
        except server.TorchServeError:
            info = None
        if info is not None:
            stop_instance(home, info)
        kill_leftovers({p.pid for p in psutil.Process().children(recursive=True)} - before)


def tree_listing(root: Path) -> dict[str, str]:
    """Return {relative path: sha256 (files) or 'dir'} for everything under root, hidden entries included."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


# --------------------------------------------------------------------------------------------- figures


def report(path: Path, name: str, figures: dict) -> None:
    """Print the figures (pytest -s shows them) and write them as JSON to path."""
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\n[reliability] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()) + f"  (written to {path})")
    sink = os.environ.get("AIAAS_RELIABILITY_REPORT_DIR")  # optional: collect every figure file in one place
    if sink:
        Path(sink).mkdir(parents=True, exist_ok=True)
        (Path(sink) / path.name).write_text(path.read_text())
