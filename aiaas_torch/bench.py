"""Load generator and report for served models: throughput, latency percentiles, errors and CPU, as JSON and a plot.

A closed-loop generator: `concurrency` keep-alive HTTP/1.1 connections on 127.0.0.1, each sending its next request
as soon as the previous answer arrived. Each level warms up, then counts the answers completed inside a timed
window. The client is a raw asyncio Protocol (no HTTP library, no per-request coroutine), so one process costs
about 25 µs of CPU per request; `processes=N` splits the connections over N processes when one is not enough.
Everything is bounded: per-level seconds, a cap on requests, a per-request timeout; only loopback targets.

    report = bench_run_dir("runs/origin", {"default": ServingConfig(), "latency": ServingConfig.profile("latency")})
    print(report.table()); report.save("bench.json"); plot(report, "bench.png")
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import shutil
import socket
import tempfile
import threading
import time
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import psutil

from .errors import InputError

__all__ = [
    "Target",
    "LevelResult",
    "ConfigResult",
    "BenchReport",
    "measure",
    "bench_served",
    "bench_run_dir",
    "generator_ceiling",
    "serve_trivial",
    "package_with_handler",
    "plot",
    "wait_quiet",
    "DEFAULT_CONCURRENCY",
]

DEFAULT_CONCURRENCY = (1, 8, 32)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_MEASURING, _WARMING, _STOPPING = 1, 0, 2


# --------------------------------------------------------------------------------------------- results


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


@dataclass
class LevelResult:
    """One concurrency level: answers counted in the timed window, their latency and the CPU spent."""

    concurrency: int
    requests: int  # requests finished in the window: successful answers plus errors
    errors: int  # answers with status >= 400, timeouts, broken connections
    error_kinds: dict
    seconds: float  # the timed window
    rps: float  # successful answers / seconds (errors are not throughput); latencies are theirs too
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    generator_cpu_percent: float  # the generator's own processes; 100 = one core busy
    server_cpu_percent: float | None  # the server's process tree, when its pid is known
    machine_cpu_percent: float  # the whole machine; 100 × cores = saturated
    processes: int = 1
    server_cpu_split: dict | None = None  # {"main": the server's own process (TorchServe: Java), "children": its workers}


@dataclass
class ConfigResult:
    """One served configuration and its levels."""

    label: str
    levels: list
    serving: dict | None = None
    ready_seconds: float | None = None
    note: str = ""


@dataclass
class BenchReport:
    """A whole run: machine, settings, each configuration's levels, and ratios asked for."""

    machine: dict
    settings: dict
    results: list
    ratios: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return the report as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "BenchReport":
        """Return the report rebuilt from `to_dict` output (e.g. a saved JSON file, to plot it again)."""
        results = [ConfigResult(r["label"], [LevelResult(**lv) for lv in r["levels"]], r.get("serving"), r.get("ready_seconds"),
                                r.get("note", "")) for r in d["results"]]  # fmt: skip
        return cls(dict(d["machine"]), dict(d["settings"]), results, dict(d.get("ratios", {})))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def level(self, label: str, concurrency: int) -> LevelResult | None:
        """Return the result of configuration `label` at `concurrency`, or None."""
        for r in self.results:
            if r.label == label:
                for lv in r.levels:
                    if lv.concurrency == concurrency:
                        return lv
        return None

    def table(self) -> str:
        """Return the results as a Markdown table, one row per configuration and concurrency."""
        head = ("| config | c | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | gen CPU % | server CPU % "
                "| server CPU µs/req | others' CPU % |")  # fmt: skip
        rows = [head, "|" + "---|" * 12]
        for r in self.results:
            for lv in r.levels:
                srv, per_req, others = "–", "–", lv.machine_cpu_percent - lv.generator_cpu_percent
                if lv.server_cpu_percent is not None:
                    srv = f"{lv.server_cpu_percent:.0f}"
                    per_req = f"{lv.server_cpu_percent * 1e4 / lv.rps:.0f}" if lv.rps else "–"
                    others -= lv.server_cpu_percent
                rows.append(
                    f"| {r.label} | {lv.concurrency} | {lv.rps:,.0f} | {lv.p50_ms:.2f} | {lv.p90_ms:.2f} | {lv.p99_ms:.2f} | "
                    f"{lv.max_ms:.1f} | {lv.errors} | {lv.generator_cpu_percent:.0f} | {srv} | {per_req} | {max(0.0, others):.0f} |"
                )
        out = "\n".join(rows)
        if self.ratios:
            out += "\n\n" + "\n".join(f"- {k}: {v:.2f}" for k, v in self.ratios.items())
        return out


def machine_info() -> dict:
    """Return what a reader needs to judge the figures: CPU, cores, memory, load, versions."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": model,
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


# --------------------------------------------------------------------------------------------- the client


class _Run:
    """Shared state of one process's connections for one level."""

    def __init__(self, loop, target: Target, timeout: float, max_requests: int):
        self.loop = loop
        self.host = urlsplit(target.url).hostname
        self.port = urlsplit(target.url).port
        self.request = target.request_bytes()
        self.timeout = timeout
        self.max_requests = max_requests
        self.phase = _WARMING
        self.sent = 0
        self.latencies = array("d")
        self.errors: dict[str, int] = {}
        self.conns: list[_Conn] = []
        self.reconnects = 0

    def error(self, kind: str) -> None:
        """Count an error (only inside the timed window)."""
        if self.phase == _MEASURING:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    async def connect(self) -> None:
        """Open one more connection (retrying a refused connect a few times)."""
        for attempt in range(20):
            try:
                await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
                return
            except OSError:
                self.error("connect")
                await asyncio.sleep(0.05 * (attempt + 1))
        raise ConnectionError(f"cannot connect to {self.host}:{self.port}")


def _content_length(head: bytes) -> int | None:
    """Return the Content-Length of a lower-cased HTTP message head, or None when it has none."""
    i = head.find(b"\r\ncontent-length:")
    if i < 0:
        return None
    j = head.find(b"\r\n", i + 2)
    return int(head[i + 17 : j if j >= 0 else len(head)])


class _Conn(asyncio.Protocol):
    """One keep-alive connection in a closed loop: send, read the whole answer, record, send again."""

    def __init__(self, run: _Run):
        self.run = run
        self.transport = None
        self.buf = bytearray()
        self.t0 = 0.0
        self.busy = False
        self.done = run.loop.create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.run.conns.append(self)
        self._send()

    def _send(self) -> None:
        run = self.run
        if run.phase == _STOPPING or run.sent >= run.max_requests:
            self.busy = False
            self.transport.close()
            return
        run.sent += 1
        self.busy = True
        self.t0 = time.perf_counter()
        self.transport.write(run.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            try:
                status = int(head[9:12])
            except ValueError:
                self._broken("bad-response")
                return
            length = _content_length(head)
            if length is not None:
                total = end + 4 + length
            elif b"chunked" in head:
                k = buf.find(b"0\r\n\r\n", end + 4)
                if k < 0:
                    return
                total = k + 5
            else:
                total = end + 4
            if len(buf) < total:
                return
            del buf[:total]
            self._answered(status, b"connection: close" in head)
            if not buf or self.transport.is_closing():
                return

    def _answered(self, status: int, closing: bool) -> None:
        run = self.run
        if run.phase == _MEASURING:
            if status >= 400:  # an error answer is no throughput, and its latency is not a served request's
                run.errors[str(status)] = run.errors.get(str(status), 0) + 1
            else:
                run.latencies.append(time.perf_counter() - self.t0)
        self.busy = False
        if closing:
            self.transport.close()
            if run.phase != _STOPPING:
                run.loop.create_task(run.connect())
            return
        self._send()

    def _broken(self, kind: str) -> None:
        self.run.error(kind)
        self.busy = False
        self.transport.abort()

    def timed_out(self) -> None:
        """Abort a request that outlived the timeout; a fresh connection takes this one's place."""
        self.run.error("timeout")
        self.busy = False
        self.transport.abort()

    def connection_lost(self, exc) -> None:
        run = self.run
        if self in run.conns:
            run.conns.remove(self)
        if self.busy:  # the server closed with our request outstanding
            run.error("connection")
            self.busy = False
            if run.phase != _STOPPING and run.reconnects < 1000:
                run.reconnects += 1
                run.loop.create_task(run.connect())
        if not self.done.done():
            self.done.set_result(None)


async def _run_level(
    target: Target, concurrency: int, start_at: float, warmup: float, duration: float, timeout: float,
    max_requests: int, tick: Callable[[float, int], None] | None = None,
) -> dict:  # fmt: skip
    """Run one level in this process; returns raw counts, latencies (bytes of doubles) and CPU seconds."""
    loop = asyncio.get_running_loop()
    run = _Run(loop, target, timeout, max_requests)
    delay = start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    await asyncio.gather(*(run.connect() for _ in range(concurrency)))
    t_measure = start_at + warmup
    t_end = t_measure + duration
    cpu0 = None
    while True:
        now = time.monotonic()
        for c in list(run.conns):
            if c.busy and time.perf_counter() - c.t0 > timeout:
                c.timed_out()
        if run.phase == _WARMING and now >= t_measure:
            run.phase, cpu0, t0 = _MEASURING, time.process_time(), now
        if now >= t_end or run.sent >= max_requests:
            break
        if tick is not None:
            tick(now, len(run.latencies))
        await asyncio.sleep(min(0.1, max(0.0, (t_measure if run.phase == _WARMING else t_end) - now)))
    if run.phase == _WARMING:  # max_requests reached during warm-up: nothing measured
        cpu0, t0 = time.process_time(), time.monotonic()
    t1 = time.monotonic()
    cpu1 = time.process_time()
    run.phase = _STOPPING
    pending = [c.done for c in run.conns]
    for c in run.conns:
        if not c.busy:
            c.transport.close()
    if pending:
        await asyncio.wait(pending, timeout=timeout)
        for c in list(run.conns):
            c.transport.abort()
    return {
        "latencies": run.latencies.tobytes(),
        "errors": run.errors,
        "seconds": t1 - t0,
        "cpu_seconds": cpu1 - cpu0,
    }


class _GeneratorPool:
    """Generator processes for `processes > 1`: this file run as a script (no torch import), one job per line."""

    def __init__(self, n: int):
        import subprocess
        import sys

        self.dir = tempfile.mkdtemp(prefix="aiaas-bench-gen-")
        self.procs = [
            subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "worker"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, bufsize=1)  # fmt: skip
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


def _worker_main() -> None:
    """Entry point of a generator process: run each job line from stdin, answer one JSON line on stdout."""
    import sys

    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        t = job["target"]
        target = Target(t["url"], t["body"].encode("latin-1"), t["headers"], t["method"])
        r = asyncio.run(_run_level(target, job["concurrency"], job["start_at"], job["warmup"], job["duration"],
                                   job["timeout"], job["max_requests"]))  # fmt: skip
        Path(job["out"]).write_bytes(r.pop("latencies"))
        print(json.dumps({**r, "out": job["out"]}), flush=True)


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


class _Sampler(threading.Thread):
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


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Return the nearest-rank percentile q (0–100) of sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def measure(
    target: Target,
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    duration: float = 10.0,
    warmup: float = 3.0,
    timeout: float = 10.0,
    max_requests: int = 2_000_000,
    processes: int = 1,
    server_pids: Sequence[int] = (),
    progress: bool | None = None,
    label: str = "",
) -> list[LevelResult]:
    """Return one LevelResult per concurrency: `warmup` s of load, then answers counted over `duration` s.

    processes > 1 splits each level's connections over that many generator processes (never more than the
    connections). max_requests bounds each level; timeout aborts (and counts) a request that takes longer.
    """
    target.check()
    if duration <= 0 or warmup < 0 or timeout <= 0:
        raise InputError("duration and timeout must be > 0, warmup ≥ 0")
    levels = [int(c) for c in concurrency]
    if not levels or any(c < 1 for c in levels):
        raise InputError(f"concurrency: {list(concurrency)!r} must be integers ≥ 1")
    processes = max(1, int(processes))
    from tqdm import tqdm

    import sys

    show = sys.stderr.isatty() if progress is None else progress
    per_level = warmup + duration
    bar = tqdm(total=round(per_level * len(levels), 1), disable=not show, unit="s", leave=False,
               desc=f"bench {label}".strip(), bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s {postfix}")  # fmt: skip
    pool = _GeneratorPool(processes) if processes > 1 and max(levels) > 1 else None
    results = []
    try:
        for i, c in enumerate(levels):
            base = i * per_level
            start_at = time.monotonic() + 0.2
            sampler = _Sampler(start_at + warmup, start_at + warmup + duration, server_pids)
            sampler.start()

            def tick(now: float, answered: int, base=base, start_at=start_at, c=c) -> None:
                bar.n = round(min(per_level, max(0.0, now - start_at)) + base, 1)
                bar.set_postfix_str(f"c={c}", refresh=False)
                bar.refresh()

            n = min(processes, c)
            if n == 1:
                parts = [asyncio.run(_run_level(target, c, start_at, warmup, duration, timeout, max_requests, tick if show else None))]
            else:
                shares = [c // n + (1 if k < c % n else 0) for k in range(n)]
                t = {"url": target.url, "body": target.body.decode("latin-1"), "headers": target.headers, "method": target.method}
                pool.start([{"target": t, "concurrency": s, "start_at": start_at, "warmup": warmup, "duration": duration,
                             "timeout": timeout, "max_requests": max(1, max_requests // n)} for s in shares])  # fmt: skip
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
                    p50_ms=round(_percentile(ms, 50), 3),
                    p90_ms=round(_percentile(ms, 90), 3),
                    p99_ms=round(_percentile(ms, 99), 3),
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


# --------------------------------------------------------------------------------------------- a trivial server


class _Trivial(asyncio.Protocol):
    """Answers every HTTP/1.1 request on the connection with the same small JSON, keep-alive."""

    ANSWER = b'{"predictions":[12.0]}'
    RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER)) + ANSWER

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            length = _content_length(head) or 0
            if len(buf) < end + 4 + length:
                return
            del buf[: end + 4 + length]
            self.transport.write(self.RESPONSE)


def _trivial_main(port: int, seconds: float) -> None:
    """Serve the trivial responder on 127.0.0.1:port for at most `seconds` (a child process's entry point)."""

    async def main():
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(_Trivial, "127.0.0.1", port, backlog=1024)
        async with srv:
            await asyncio.sleep(seconds)

    asyncio.run(main())


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc=None, timeout: float = 10.0) -> None:
    """Return once 127.0.0.1:port accepts connections; RuntimeError if `proc` (a Popen) exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server process exited (code {proc.returncode}) before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


class serve_trivial:
    """Context manager: a raw asyncio HTTP responder in a child process; yields (URL, pid); stopped on exit."""

    def __init__(self, max_seconds: float = 600.0):
        self.max_seconds = max_seconds
        self.proc = None

    def __enter__(self) -> tuple[str, int]:
        import subprocess
        import sys

        port = _free_port()
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "trivial", str(port), str(self.max_seconds)])
        try:
            wait_port(port, self.proc)
        except BaseException:
            self.__exit__()
            raise
        return f"http://127.0.0.1:{port}/predictions/trivial", self.proc.pid

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except Exception:
                self.proc.kill()
                self.proc.wait()


def generator_ceiling(concurrency: Sequence[int] = DEFAULT_CONCURRENCY, duration: float = 5.0, warmup: float = 1.0,
                      processes: int = 1, progress: bool | None = None) -> ConfigResult:  # fmt: skip
    """Return the generator's own ceiling: the same load against the trivial responder (a child process)."""
    with serve_trivial(max_seconds=len(concurrency) * (duration + warmup) + 60) as (url, pid):
        levels = measure(Target(url), concurrency, duration, warmup, processes=processes, server_pids=[pid],
                         progress=progress, label="trivial")  # fmt: skip
    return ConfigResult(f"trivial server ({processes} gen. proc.)", levels, note="raw asyncio responder, one process")


# --------------------------------------------------------------------------------------------- TorchServe


def _card_body(card: dict) -> bytes:
    """Return a one-row request body made of each feature's training mean."""
    row = [round(float(f.get("mean", 0.0)), 6) for f in card["input"]["features"]]
    return json.dumps({"instances": [row]}).encode()


def served_target(home: str | os.PathLike, model: str, body: bytes | None = None, version: str | None = None) -> Target:
    """Return the Target of a model served by the TorchServe of HOME (URL and token from the home)."""
    from . import server

    info = server.load_info(home)
    if info is None:
        raise InputError(f"no server recorded in {Path(home) / 'server.json'}; start one with `aiaas serve start`")
    keys = server.read_keys(home)
    if body is None:
        from .client import Client

        with Client(home=home, timeout=10) as c:
            card = c.describe(model, version)[0].get("customizedMetadata")
        body = _card_body(card) if isinstance(card, dict) else b'{"instances": [[0.0]]}'
    url = f"{info.inference_url}/predictions/{model}" + (f"/{version}" if version else "")
    return Target(url, body, {"Authorization": f"Bearer {keys['inference']}"})


def bench_served(home: str | os.PathLike, model: str, body: bytes | None = None, **kwargs) -> BenchReport:
    """Return the report of a model already served by HOME's TorchServe (measure's keyword arguments apply)."""
    from . import server

    info = server.load_info(home)
    target = served_target(home, model, body)
    pids = [info.pid] if info is not None else []
    levels = measure(target, server_pids=pids, label=model, **kwargs)
    return BenchReport(machine_info(), _settings(kwargs), [ConfigResult(model, levels)])


def _settings(kwargs: Mapping) -> dict:
    """Return the load settings for the report."""
    s = {"concurrency": list(kwargs.get("concurrency", DEFAULT_CONCURRENCY)), "duration_s": kwargs.get("duration", 10.0),
         "warmup_s": kwargs.get("warmup", 3.0), "processes": kwargs.get("processes", 1),
         "timeout_s": kwargs.get("timeout", 10.0), "generator": "raw asyncio HTTP/1.1, keep-alive, closed loop"}  # fmt: skip
    return s


def package_with_handler(run_dir, name: str, store, serving, handler_file: str | os.PathLike):
    """Return the PackageResult of the run directory packaged with `serving` and another handler file.

    Used for the no-op baseline: the same archive, config and card, but a handler that answers without a model.
    """
    from .archive import package

    return package(run_dir, name, "1.0", store, serving=serving, handler=handler_file)


_CONFIG_ALIASES = {"batch": "batch_size", "delay": "max_batch_delay_ms", "max_batch_delay": "max_batch_delay_ms",
                   "timeout": "response_timeout_s", "response_timeout": "response_timeout_s"}  # fmt: skip


def parse_config(text: str):
    """Return (label, ServingConfig) from "LABEL:workers=2,batch_size=16,max_batch_delay_ms=0" (ValueError if bad).

    Fields not given keep the throughput profile's values; batch, delay and timeout are accepted as short names.
    """
    from .archive import ServingConfig

    label, sep, rest = text.partition(":")
    if not sep or not label.strip():
        raise InputError(f"--config {text!r}: expected LABEL:key=value,... e.g. w1:workers=1,batch_size=8")
    cfg = ServingConfig()
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        key = _CONFIG_ALIASES.get(key.strip(), key.strip())
        if not eq or key not in ServingConfig.__dataclass_fields__ or key == "max_rows":
            raise InputError(f"--config {text!r}: {item!r} is not key=value with a key among workers, batch_size, "
                             f"max_batch_delay_ms, response_timeout_s, threads")  # fmt: skip
        try:
            setattr(cfg, key, int(value))
        except ValueError:
            raise InputError(f"--config {text!r}: {key} needs an integer, got {value!r}") from None
    return label.strip(), cfg.validate()


def configs_from_args(profiles: Sequence[str] | None, specs: Sequence[str]) -> dict:
    """Return {label: ServingConfig} for the named profiles and LABEL:k=v specs (default: the throughput profile)."""
    from .archive import ServingConfig

    configs = {p: ServingConfig.profile(p) for p in (profiles or ([] if specs else ["throughput"]))}
    for text in specs:
        label, cfg = parse_config(text)
        if label in configs:
            raise InputError(f"--config {text!r}: label {label!r} used twice")
        configs[label] = cfg
    return configs


def bench_run_dir(
    run_dir: str | os.PathLike,
    configs: Mapping[str, object],
    name: str = "bench",
    handlers: Mapping[str, str | os.PathLike] | None = None,
    access_log: bool = False,
    workdir: str | os.PathLike | None = None,
    server_config: str | os.PathLike | None = None,
    server_warmup: float = 10.0,
    **kwargs,
) -> BenchReport:
    """Return the report of one run directory served under each {label: ServingConfig}, one server after another.

    For each configuration: package the run directory (with handlers[label] instead of our handler when given),
    start TorchServe on free loopback ports in a private home, wait for READY, measure, stop. measure's keyword
    arguments apply (concurrency, duration, warmup, processes, ...). Before the first level, each new server gets
    `server_warmup` seconds of load at the highest concurrency (not measured): TorchServe's JIT needs 10–15 s.
    """
    from . import server
    from .archive import package
    from .export import read_card

    card = read_card(run_dir)
    body = kwargs.pop("body", None) or _card_body(card)
    handlers = dict(handlers or {})
    results = []
    with tempfile.TemporaryDirectory(prefix="aiaas-bench-", dir=workdir) as root:
        for label, serving in configs.items():
            root_i = Path(root) / f"c{len(results)}"
            store, home = root_i / "store", root_i / "home"
            if label in handlers:
                mar = package_with_handler(run_dir, name, store, serving, handlers[label])
            else:
                mar = package(run_dir, name, "1.0", store, serving=serving)
            t0 = time.perf_counter()
            info = server.start(home, store, {name: mar.path.name}, free_ports=True, config=server_config,
                                ready_timeout=180, access_log=access_log)  # fmt: skip
            ready = time.perf_counter() - t0
            try:
                keys = server.read_keys(home)
                target = Target(f"{info.inference_url}/predictions/{name}", body, {"Authorization": f"Bearer {keys['inference']}"})
                if server_warmup > 0:
                    top = max(kwargs.get("concurrency", DEFAULT_CONCURRENCY))
                    measure(target, (top,), duration=server_warmup, warmup=0.0, progress=False,
                            timeout=kwargs.get("timeout", 10.0))  # fmt: skip
                levels = measure(target, server_pids=[info.pid], label=label, **kwargs)
            finally:
                server.stop(home)
            results.append(ConfigResult(label, levels, asdict(serving), round(ready, 2),
                                        note=f"handler {Path(handlers[label]).name}" if label in handlers else ""))  # fmt: skip
    return BenchReport(machine_info(), {**_settings(kwargs), "run_dir": str(run_dir), "server_warmup_s": server_warmup}, results)


# --------------------------------------------------------------------------------------------- plot


def plot(report: BenchReport, path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Write a PNG of throughput and p99 latency against concurrency, one line per configuration.

    Returns the path, or None (with a line on stderr) when matplotlib, the optional `plots` extra, is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import sys

        print("aiaas bench: matplotlib is not installed (pip install 'aiaas-torch[plots]'); no plot written", file=sys.stderr)
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    for r in report.results:
        cs = [lv.concurrency for lv in r.levels]
        ax1.plot(cs, [lv.rps for lv in r.levels], marker="o", label=r.label)
        ax2.plot(cs, [lv.p99_ms for lv in r.levels], marker="o", label=r.label)
    levels = sorted({lv.concurrency for r in report.results for lv in r.levels})
    for ax, ylabel in ((ax1, "requests/s"), (ax2, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrency (connections)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle(title or f"{report.machine.get('cores')} cores, {report.machine.get('cpu', '')[:40]}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":  # run as a script: a generator process or the trivial responder (no torch import)
    import sys

    if sys.argv[1:2] == ["worker"]:
        _worker_main()
    elif sys.argv[1:2] == ["trivial"]:
        _trivial_main(int(sys.argv[2]), float(sys.argv[3]))
    else:
        sys.exit("usage: bench.py worker | trivial PORT SECONDS (use `aiaas bench` instead)")
