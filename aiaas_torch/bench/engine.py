"""The generator's engine in one process: closed-loop keep-alive HTTP/1.1 connections, and the trivial responder.

Standard library only and no import from the package: the generator's child processes run this file as a script
(`worker`, `trivial PORT SECONDS`), so they load neither torch nor `aiaas_torch`. A raw asyncio Protocol (no HTTP
library, no per-request coroutine) costs about 25 µs of CPU per request.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from pathlib import Path
from typing import Callable

MEASURING, WARMING, STOPPING = 1, 0, 2


class _Run:
    """Shared state of one process's connections for one level."""

    def __init__(self, loop, host: str, port: int, request: bytes, timeout: float, max_requests: int):
        self.loop = loop
        self.host = host
        self.port = port
        self.request = request
        self.timeout = timeout
        self.max_requests = max_requests
        self.phase = WARMING
        self.sent = 0
        self.latencies = array("d")
        self.errors: dict[str, int] = {}
        self.conns: list[_Conn] = []
        self.reconnects = 0

    def error(self, kind: str) -> None:
        """Count an error (only inside the timed window)."""
        if self.phase == MEASURING:
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


def _first_message(buf: bytearray) -> tuple[bytes, int] | None:
    """Return (lower-cased head, length) of the first complete HTTP/1.1 message in buf, or None while incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    length = _content_length(head)
    if length is not None:
        total = end + 4 + length
    elif b"chunked" in head:
        k = buf.find(b"0\r\n\r\n", end + 4)
        if k < 0:
            return None
        total = k + 5
    else:
        total = end + 4
    return (head, total) if len(buf) >= total else None


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
        if run.phase == STOPPING or run.sent >= run.max_requests:
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
        while (message := _first_message(buf)) is not None:
            head, total = message
            try:
                status = int(head[9:12])
            except ValueError:
                self._broken("bad-response")
                return
            del buf[:total]
            self._answered(status, b"connection: close" in head)
            if not buf or self.transport.is_closing():
                return

    def _answered(self, status: int, closing: bool) -> None:
        run = self.run
        if run.phase == MEASURING:
            if status >= 400:  # an error answer is no throughput, and its latency is not a served request's
                run.errors[str(status)] = run.errors.get(str(status), 0) + 1
            else:
                run.latencies.append(time.perf_counter() - self.t0)
        self.busy = False
        if closing:
            self.transport.close()
            if run.phase != STOPPING:
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
            if run.phase != STOPPING and run.reconnects < 1000:
                run.reconnects += 1
                run.loop.create_task(run.connect())
        if not self.done.done():
            self.done.set_result(None)


async def run_level(
    host: str, port: int, request: bytes, concurrency: int, start_at: float, warmup: float, duration: float,
    timeout: float, max_requests: int, tick: Callable[[float, int], None] | None = None,
) -> dict:  # fmt: skip
    """Run one level in this process; returns raw counts, latencies (bytes of doubles) and CPU seconds."""
    loop = asyncio.get_running_loop()
    run = _Run(loop, host, port, request, timeout, max_requests)
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
        if run.phase == WARMING and now >= t_measure:
            run.phase, cpu0, t0 = MEASURING, time.process_time(), now
        if now >= t_end or run.sent >= max_requests:
            break
        if tick is not None:
            tick(now, len(run.latencies))
        await asyncio.sleep(min(0.1, max(0.0, (t_measure if run.phase == WARMING else t_end) - now)))
    if run.phase == WARMING:  # max_requests reached during warm-up: nothing measured
        cpu0, t0 = time.process_time(), time.monotonic()
    t1 = time.monotonic()
    cpu1 = time.process_time()
    run.phase = STOPPING
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


def _worker_main() -> None:
    """Entry point of a generator process: run each job line from stdin, answer one JSON line on stdout."""
    import sys

    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        r = asyncio.run(run_level(job["host"], job["port"], job["request"].encode("latin-1"), job["concurrency"],
                                  job["start_at"], job["warmup"], job["duration"], job["timeout"], job["max_requests"]))  # fmt: skip
        Path(job["out"]).write_bytes(r.pop("latencies"))
        print(json.dumps({**r, "out": job["out"]}), flush=True)


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
        while (message := _first_message(buf)) is not None:
            del buf[: message[1]]
            self.transport.write(self.RESPONSE)


def _trivial_main(port: int, seconds: float) -> None:
    """Serve the trivial responder on 127.0.0.1:port for at most `seconds` (a child process's entry point)."""

    async def main():
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(_Trivial, "127.0.0.1", port, backlog=1024)
        async with srv:
            await asyncio.sleep(seconds)

    asyncio.run(main())


if __name__ == "__main__":  # a child process of the generator: a generator process or the trivial responder
    import sys

    if sys.argv[1:2] == ["worker"]:
        _worker_main()
    elif sys.argv[1:2] == ["trivial"]:
        _trivial_main(int(sys.argv[2]), float(sys.argv[3]))
    else:
        sys.exit("usage: engine.py worker | trivial PORT SECONDS (use `aiaas bench` instead)")
