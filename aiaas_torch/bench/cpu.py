"""The machine under measurement: its description, its load average, and CPU sampled over a timed window."""

from __future__ import annotations

import os
import platform
import shutil
import threading
import time
from typing import Iterable, Sequence

import psutil

from ..handlers import integrity


def machine_info() -> dict:
    """Return what a reader needs to judge the figures: CPU, cores, memory, load, versions."""
    model = integrity.cpu_model_name()
    info = {
        "cpu": model if model != "unknown" else platform.processor() or "",
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    import importlib.metadata as md

    for pkg in ("torch", "torchserve", "torchao", "aiaas-torch"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    java = shutil.which("java")
    info["java"] = java
    return info


def wait_quiet(threshold: float = 1.0, max_wait: float = 600.0, step: float = 60.0, echo=None) -> float:
    """Return the 1-minute load average once it is below `threshold`, waiting in `step`-second sleeps.

    Gives up after `max_wait` seconds and returns the load as it is then (the report records it): timings on a
    busy machine are still written, but marked by their loadavg_1min.
    """
    deadline = time.monotonic() + max_wait
    while True:
        load = os.getloadavg()[0]
        if load < threshold or time.monotonic() + step > deadline:
            return load
        if echo:
            echo(f"load average {load:.2f} ≥ {threshold}: waiting {step:g} s for a quieter machine")
        time.sleep(step)


def _tree(pids: Iterable[int]) -> list[psutil.Process]:
    """Return the processes and all their descendants."""
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs.append(p)
            procs += p.children(recursive=True)
        except psutil.Error:
            continue
    return procs


def _cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    """Return the CPU seconds (user + system) the processes have used so far."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


class CpuSampler(threading.Thread):
    """Samples the server's and the machine's CPU at the window's start and end (from its own thread)."""

    def __init__(self, t_start: float, t_end: float, server_pids: Sequence[int]):
        super().__init__(daemon=True)
        self.t_start, self.t_end, self.server_pids = t_start, t_end, list(server_pids)
        self.server: float | None = None
        self.split: dict | None = None
        self.machine = 0.0

    def run(self) -> None:
        time.sleep(max(0.0, self.t_start - time.monotonic()))
        procs = _tree(self.server_pids)
        mains = [p for p in procs if p.pid in self.server_pids]
        s0, r0, m0, w0 = _cpu_seconds(procs), _cpu_seconds(mains), psutil.cpu_times(), time.monotonic()
        time.sleep(max(0.0, self.t_end - time.monotonic()))
        s1, r1, m1, w1 = _cpu_seconds(procs), _cpu_seconds(mains), psutil.cpu_times(), time.monotonic()
        wall = max(1e-9, w1 - w0)
        if self.server_pids:
            self.server = 100.0 * (s1 - s0) / wall
            main = 100.0 * (r1 - r0) / wall
            self.split = {"main": round(main, 1), "children": round(self.server - main, 1)}
        busy = lambda t: t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)  # noqa: E731
        self.machine = 100.0 * (busy(m1) - busy(m0)) / wall
