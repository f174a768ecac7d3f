"""The closed-loop load generator: a Target, levels of concurrency measured into LevelResults, over 1..N processes.

`concurrency` keep-alive HTTP/1.1 connections on 127.0.0.1, each sending its next request as soon as the previous
answer arrived. Each level warms up, then counts the answers completed inside a timed window. `processes=N` splits
the connections over N generator processes (`engine.py` run as a script: no torch, no package import). Everything
is bounded: per-level seconds, a cap on requests, a per-request timeout; only loopback targets.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import urlsplit

from ..deprecation import renamed_keywords
from ..errors import InputError
from . import engine
from .cpu import CpuSampler
from .report import LevelResult

DEFAULT_CONCURRENCY = (1, 8, 32)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
ENGINE_SCRIPT = str(Path(engine.__file__).resolve())


@dataclass
class Target:
    """What to load: an http://127.0.0.1:PORT/path URL, the JSON body to POST, extra headers."""

    url: str
    body: bytes = b'{"instances": [[6.0]]}'
    headers: dict = field(default_factory=dict)
    method: str = "POST"

    def check(self) -> "Target":
        """Return self after refusing anything but plain HTTP to a loopback address (ValueError)."""
        u = urlsplit(self.url)
        if u.scheme != "http" or u.hostname not in LOOPBACK_HOSTS or not u.port:
            raise InputError(f"url: {self.url!r} must be http://127.0.0.1:PORT/... (the generator loads loopback only)")
        return self

    def request_bytes(self) -> bytes:
        """Return the complete HTTP/1.1 request, keep-alive, ready to write again and again."""
        u = urlsplit(self.url)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        lines = [f"{self.method} {path} HTTP/1.1", f"Host: {u.hostname}:{u.port}", "Connection: keep-alive"]
        headers = {"Content-Type": "application/json", **self.headers}
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if self.method != "GET" or self.body:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class _GeneratorPool:
    """Generator processes for `processes > 1`: engine.py run as a script (no torch import), one job per line."""

    def __init__(self, n: int):
        self.dir = tempfile.mkdtemp(prefix="aiaas-bench-gen-")
        self.procs = [
            subprocess.Popen([sys.executable, ENGINE_SCRIPT, "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, bufsize=1)  # fmt: skip
            for _ in range(n)
        ]
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                self.close()
                raise RuntimeError("a load generator process failed to start")

    def start(self, jobs: list[dict]) -> None:
        """Hand one job to each of the first len(jobs) processes."""
        for k, (p, job) in enumerate(zip(self.procs, jobs)):
            p.stdin.write(json.dumps({**job, "out": os.path.join(self.dir, f"lat{k}.bin")}) + "\n")
            p.stdin.flush()

    def results(self, count: int) -> list[dict]:
        """Return the results of the jobs started, in order."""
        out = []
        for p in self.procs[:count]:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"load generator process {p.pid} died (exit code {p.wait()})")
            r = json.loads(line)
            r["latencies"] = Path(r.pop("out")).read_bytes()
            out.append(r)
        return out

    def close(self) -> None:
        """Stop the processes (closing stdin ends them) and remove the scratch directory."""
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except Exception:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def percentile(values: Iterable[float], q: float) -> float:
    """Return the nearest-rank percentile q (0–100) of values, in any order (0.0 for none)."""
    s = sorted(values)
    if not s:
        return 0.0
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def measure(
    target: Target,
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    duration: float = 10.0,
    warmup: float = 3.0,
    request_timeout: float = 10.0,
    max_requests: int = 2_000_000,
    processes: int = 1,
    server_pids: Sequence[int] = (),
    progress: bool | None = None,
    label: str = "",
    **old,
) -> list[LevelResult]:
    """Return one LevelResult per concurrency: `warmup` s of load, then answers counted over `duration` s.

    processes > 1 splits each level's connections over that many generator processes (never more than the
    connections). max_requests bounds each level; request_timeout aborts (and counts) a request that takes longer
    (`timeout`, its old spelling, still works for one release and warns).
    """
    timeout = renamed_keywords("measure", old, {"timeout": "request_timeout"}).get("request_timeout", request_timeout)
    target.check()
    if duration <= 0 or warmup < 0 or timeout <= 0:
        raise InputError("duration and request_timeout must be > 0, warmup ≥ 0")
    levels = [int(c) for c in concurrency]
    if not levels or any(c < 1 for c in levels):
        raise InputError(f"concurrency: {list(concurrency)!r} must be integers ≥ 1")
    processes = max(1, int(processes))
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    per_level = warmup + duration
    bar = tqdm(total=round(per_level * len(levels), 1), disable=not show, unit="s", leave=False,
               desc=f"bench {label}".strip(), bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s {postfix}")  # fmt: skip
    u = urlsplit(target.url)
    request = target.request_bytes()
    pool = _GeneratorPool(processes) if processes > 1 and max(levels) > 1 else None
    results = []
    try:
        for i, c in enumerate(levels):
            base = i * per_level
            start_at = time.monotonic() + 0.2
            sampler = CpuSampler(start_at + warmup, start_at + warmup + duration, server_pids)
            sampler.start()

            def tick(now: float, answered: int, base=base, start_at=start_at, c=c) -> None:
                bar.n = round(min(per_level, max(0.0, now - start_at)) + base, 1)
                bar.set_postfix_str(f"c={c}", refresh=False)
                bar.refresh()

            n = min(processes, c)
            if n == 1:
                parts = [asyncio.run(engine.run_level(u.hostname, u.port, request, c, start_at, warmup, duration, timeout,
                                                      max_requests, tick if show else None))]  # fmt: skip
            else:
                shares = [c // n + (1 if k < c % n else 0) for k in range(n)]
                pool.start([{"host": u.hostname, "port": u.port, "request": request.decode("latin-1"), "concurrency": s,
                             "start_at": start_at, "warmup": warmup, "duration": duration, "timeout": timeout,
                             "max_requests": max(1, max_requests // n)} for s in shares])  # fmt: skip
                while show and time.monotonic() < start_at + per_level:
                    tick(time.monotonic(), 0)
                    time.sleep(0.2)
                parts = pool.results(n)
            sampler.join(timeout=duration + warmup + 5)
            lat = array("d")
            errors: dict[str, int] = {}
            for p in parts:
                part = array("d")
                part.frombytes(p["latencies"])
                lat.extend(part)
                for k, v in p["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            seconds = max(p["seconds"] for p in parts)
            ms = sorted(x * 1000.0 for x in lat)
            answered = len(ms)  # successful answers only: latencies are recorded for those alone
            total = answered + sum(errors.values())
            results.append(
                LevelResult(
                    concurrency=c,
                    requests=total,
                    errors=sum(errors.values()),
                    error_kinds=errors,
                    seconds=round(seconds, 3),
                    rps=round(answered / seconds, 1) if seconds > 0 else 0.0,
                    p50_ms=round(percentile(ms, 50), 3),
                    p90_ms=round(percentile(ms, 90), 3),
                    p99_ms=round(percentile(ms, 99), 3),
                    max_ms=round(ms[-1], 3) if ms else 0.0,
                    mean_ms=round(sum(ms) / answered, 3) if answered else 0.0,
                    generator_cpu_percent=round(100.0 * sum(p["cpu_seconds"] for p in parts) / seconds, 1) if seconds > 0 else 0.0,
                    server_cpu_percent=None if sampler.server is None else round(sampler.server, 1),
                    machine_cpu_percent=round(sampler.machine, 1),
                    processes=n,
                    server_cpu_split=sampler.split,
                )
            )
    finally:
        bar.close()
        if pool is not None:
            pool.close()
    return results
