"""Promise 3: SIGKILL one worker under load (16 clients, ≥ 2,000 requests): 0 lost, 0 wrong, READY again.

The client's own retries (WorkerDied, ServiceUnavailable, broken connections) carry the requests that were in
the killed worker's batch to the surviving worker: a wrapper around each client's transport counts every
request's attempts, and the test asserts that some requests did need a retry and were then answered right.
Figures (p99 latency while the fault lasts, time to READY) are printed and written to worker_kill.json under the
test's tmp dir.

How soon the worker is READY again is a figure, not an assertion: a restart is TorchServe's one-second back-off, a
Python start that imports torch (≈ 2.5 s idle) and the handler's load (≈ 1.8 s, most of it torch.export's import of
dynamo), all sharing two cores with the load. It was 6.7-7.9 s on an idle 2-core host and 15.7 s once on a busy CI
one, so the test asserts only that it comes back (within RESTART_STALLED_S; beyond that the restart has stalled).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest

from aiaas_torch.bench import percentile
from aiaas_torch.client import Client

from rel_helpers import CountingTransport, close, own_worker_pid, report, wait_ready, workers

pytestmark = [pytest.mark.serving, pytest.mark.slow]

CLIENTS = 16
MIN_REQUESTS = 2000
MAX_REQUESTS = 8000  # bounds of the load loop: count ...
MAX_SECONDS = 120.0  # ... and time
KILL_AFTER = 300  # answered requests before the kill
RESTART_STALLED_S = 60.0  # no READY worker this long after the kill: the restart stalled


def test_sigkill_of_a_worker_under_load_loses_no_request(shared, tmp_path):
    info = shared.info
    before = workers(info, "lin")
    assert len(before) == 2 and all(s == "READY" for *_, s in before), before

    rng = np.random.default_rng(7)
    rows = rng.uniform(-3, 3, size=(MAX_REQUESTS, 3)).round(4).tolist()
    want = shared.expect(rows)

    lock = threading.Lock()
    next_index = iter(range(MAX_REQUESTS))
    results: dict[int, tuple[float, float, object]] = {}  # index → (start, end, prediction or exception)
    attempts: dict[int, int] = {}  # index → POSTs the client made for it
    failed_attempts: dict[str, int] = {}
    recovered = threading.Event()
    t_begin = time.monotonic()

    def take() -> int | None:
        with lock:
            i = next(next_index, None)
        if i is None or time.monotonic() - t_begin > MAX_SECONDS:
            return None
        if i >= MIN_REQUESTS and recovered.is_set():
            return None
        return i

    def load() -> None:
        with Client(home=shared.home, request_timeout=30) as c:  # default retries and backoff
            counter = CountingTransport(c)
            while (i := take()) is not None:
                t0, posts = time.monotonic(), counter.posts
                try:
                    value: object = c.predict("lin", {"instances": [rows[i]]})["predictions"][0]
                except Exception as e:  # noqa: BLE001 - every failure is a finding
                    value = e
                results[i] = (t0, time.monotonic(), value)
                attempts[i] = counter.posts - posts
        with lock:
            for what, n in counter.failed.items():
                failed_attempts[what] = failed_attempts.get(what, 0) + n

    threads = [threading.Thread(target=load, daemon=True) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    while len(results) < KILL_AFTER and time.monotonic() - t_begin < 60:
        time.sleep(0.01)
    victim = own_worker_pid(info, "lin")
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    try:
        ready_after = wait_ready(info, "lin", 2, timeout=RESTART_STALLED_S, exclude_pid=victim)
    finally:
        recovered.set()
        t_ready = time.monotonic()
        for t in threads:
            t.join(timeout=MAX_SECONDS)
    assert not any(t.is_alive() for t in threads), "a load thread hung"

    errors = {i: v for i, (_, _, v) in results.items() if isinstance(v, Exception)}
    wrong = {i: (v, want[i]) for i, (_, _, v) in results.items() if not isinstance(v, Exception) and not close(v, want[i])}
    during = [end - start for start, end, _ in results.values() if t_kill <= start <= t_ready]
    overall = [end - start for start, end, _ in results.values()]
    figures = {
        "requests": len(results),
        "clients": CLIENTS,
        "lost": len(errors),
        "wrong": len(wrong),
        "failed_attempts_retried": dict(failed_attempts),
        "requests_retried": sum(n > 1 for n in attempts.values()),
        "time_to_ready_s": round(ready_after, 2),
        "requests_during_fault": len(during),
        "p50_during_fault_ms": round(1000 * percentile(during, 50), 1),
        "p99_during_fault_ms": round(1000 * percentile(during, 99), 1),
        "max_during_fault_ms": round(1000 * max(during, default=float("nan")), 1),
        "p99_overall_ms": round(1000 * percentile(overall, 99), 1),
        "load_seconds": round(max(end for _, end, _ in results.values()) - t_begin, 2),
    }
    report(tmp_path / "worker_kill.json", "SIGKILL of one worker under load", figures)

    assert len(results) >= MIN_REQUESTS
    assert not errors, f"{len(errors)} requests lost, e.g. {list(errors.items())[:3]}"
    assert not wrong, f"{len(wrong)} wrong answers, e.g. {list(wrong.items())[:3]}"
    retried = {i: n for i, n in attempts.items() if n > 1}
    assert retried, "no request needed a retry: the kill did not hit a request in flight, so retries were not tested"
    # every failed attempt was retried, and each retried request ended in the right answer (none lost, none wrong)
    assert sum(n - 1 for n in attempts.values()) == sum(failed_attempts.values()), (retried, failed_attempts)
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    assert victim not in [pid for _, pid, _ in workers(info, "lin")]
