"""Promise 5: a request that outlives responseTimeout gives the caller RequestTimedOut after ONE attempt, never a hang.

The `hang` model is the real run directory behind tests/fixtures/hang_handler.py (our TabularHandler, but a
request starting with the sentinel value logs a mark and sleeps for minutes) with responseTimeout = 2 s. TorchServe
then kills the worker and answers "Worker died.", as it does for a crash; the client, with its default retries,
reads the model's responseTimeout from the management API, sees that the attempt lasted that long and raises
RequestTimedOut without retrying: one attempt (counted on the client's transport) and one hung worker (the marks
in model_log.log). Meanwhile the `lin` model on the same server keeps answering, and `hang` comes back READY.
"""

from __future__ import annotations

import threading
import time

import pytest

from aiaas_torch.bench import percentile
from aiaas_torch.client import Client, RequestTimedOut

from rel_helpers import (HANG_HANDLER, HANG_MARK, HANG_SENTINEL, HANG_TIMEOUT_S, CountingTransport, close, report,
                         wait_ready, workers)  # fmt: skip

pytestmark = [pytest.mark.serving, pytest.mark.slow]

RETRIES = 2  # the client's default: a timeout must not use them
MARGIN_S = 5.0  # TorchServe's timeout check, the kill, the answer, and the client's describe of the model


def _hangs_logged(home) -> int:
    """Return how many requests the hang handler has logged hanging on, in HOME/logs/model_log.log."""
    log = home / "logs" / "model_log.log"
    return log.read_text(errors="replace").count(HANG_MARK) if log.exists() else 0


def test_hung_request_gets_request_timed_out_after_one_attempt_while_another_model_keeps_answering(shared, tmp_path):
    info = shared.info
    assert f"SENTINEL = {HANG_SENTINEL}" in HANG_HANDLER.read_text() and f'HANG_MARK = "{HANG_MARK}"' in HANG_HANDLER.read_text()
    ((_, hung_pid, status),) = workers(info, "hang")
    assert status == "READY"
    hangs_before = _hangs_logged(shared.home)
    rows = [[0.25, -1.0, 2.0]]
    want = shared.expect(rows)[0]

    stop = threading.Event()
    other: list[tuple[float, object]] = []  # (latency, prediction or exception) of lin during the hang

    def keep_asking_lin() -> None:
        with Client(home=shared.home, request_timeout=10, retries=0) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    value: object = c.predict("lin", {"instances": rows})["predictions"][0]
                except Exception as e:  # noqa: BLE001 - any failure is a finding
                    value = e
                other.append((time.monotonic() - t0, value))
                time.sleep(0.05)

    background = threading.Thread(target=keep_asking_lin, daemon=True)
    background.start()
    try:
        with Client(home=shared.home, request_timeout=30, retries=RETRIES, backoff=0.2) as c:
            attempts = CountingTransport(c)
            t0 = time.monotonic()
            with pytest.raises(RequestTimedOut) as e:
                c.predict("hang", {"instances": [[HANG_SENTINEL, 0.0, 0.0]]})
            elapsed = time.monotonic() - t0
        ready_after = wait_ready(info, "hang", 1, timeout=60, exclude_pid=hung_pid)
    finally:
        stop.set()
        background.join(timeout=30)
    assert not background.is_alive()

    lin_errors = [v for _, v in other if isinstance(v, Exception)]
    lin_latencies = [lat for lat, v in other if not isinstance(v, Exception)]
    bound = HANG_TIMEOUT_S + MARGIN_S
    time.sleep(1.0)  # a retry, had there been one, would have reached the fresh worker by now
    hangs = _hangs_logged(shared.home) - hangs_before
    report(tmp_path / "hung_request.json", "hung request", {
        "response_timeout_s": HANG_TIMEOUT_S,
        "retries": RETRIES,
        "attempts": attempts.posts,
        "hangs_logged_by_workers": hangs,
        "status": e.value.status,
        "message": e.value.message,
        "error_after_s": round(elapsed, 2),
        "bound_s": bound,
        "ready_again_after_error_s": round(ready_after, 2),
        "other_model_requests": len(other),
        "other_model_errors": len(lin_errors),
        "other_model_p99_ms": round(1000 * percentile(lin_latencies, 99), 1),
        "other_model_max_ms": round(1000 * max(lin_latencies, default=float("nan")), 1),
    })  # fmt: skip

    assert attempts.posts == 1 and attempts.failed == {f"HTTP {e.value.status}": 1}, (attempts.posts, attempts.failed)
    assert hangs == 1, f"{hangs} workers hung on the request (one per attempt)"
    assert e.value.status in (500, 507) and e.value.message.startswith("Worker died")
    assert f"responseTimeout of {HANG_TIMEOUT_S} s" in e.value.message, e.value.message  # read from the server
    assert HANG_TIMEOUT_S <= elapsed <= bound, f"RequestTimedOut after {elapsed:.1f} s (bound {bound} s)"
    assert not lin_errors, lin_errors[:3]
    assert len(other) >= 10 and all(close(v, want) for _, v in other)
    assert max(lin_latencies) < 5.0, "the other model stalled while this one hung"
    # the hang model's fresh worker answers an ordinary request correctly
    with Client(home=shared.home, request_timeout=30, retries=0) as c:
        assert close(c.predict("hang", {"instances": rows})["predictions"][0], want)
