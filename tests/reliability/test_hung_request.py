"""Promise 5: a request that outlives responseTimeout gives the caller WorkerDied in bounded time, never a hang.

The `hang` model is the real run directory behind tests/fixtures/hang_handler.py (our TabularHandler, but a
request starting with the sentinel value sleeps for minutes) with responseTimeout = 2 s. TorchServe then kills
the worker and answers "Worker died."; the client retries (each retry hangs a fresh worker again) and raises
WorkerDied. Meanwhile the `lin` model on the same server keeps answering, and `hang` comes back READY.
"""

from __future__ import annotations

import threading
import time

import pytest

from aiaas_torch.client import Client, WorkerDied

from rel_helpers import HANG_HANDLER, HANG_SENTINEL, HANG_TIMEOUT_S, close, percentile, report, wait_ready, workers

pytestmark = [pytest.mark.serving, pytest.mark.slow]

RETRIES = 1
RESTART_ALLOWANCE_S = 10.0  # a killed worker is restarted (1 s back-off, Python + torch import, model load) per retry
MARGIN_S = 5.0 + RESTART_ALLOWANCE_S * RETRIES


def test_hung_request_gets_worker_died_within_the_bound_while_another_model_keeps_answering(shared, tmp_path):
    info = shared.info
    assert f"SENTINEL = {HANG_SENTINEL}" in HANG_HANDLER.read_text()
    assert [s for *_, s in workers(info, "hang")] == ["READY"]
    rows = [[0.25, -1.0, 2.0]]
    want = shared.expect(rows)[0]

    stop = threading.Event()
    other: list[tuple[float, object]] = []  # (latency, prediction or exception) of lin during the hang

    def keep_asking_lin() -> None:
        with Client(home=shared.home, timeout=10, retries=0) as c:
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
        with Client(home=shared.home, timeout=30, retries=RETRIES, backoff=0.2) as c:
            t0 = time.monotonic()
            with pytest.raises(WorkerDied) as e:
                c.predict("hang", {"instances": [[HANG_SENTINEL, 0.0, 0.0]]})
            elapsed = time.monotonic() - t0
        ready_after = wait_ready(info, "hang", 1, timeout=60)
    finally:
        stop.set()
        background.join(timeout=30)
    assert not background.is_alive()

    lin_errors = [v for _, v in other if isinstance(v, Exception)]
    lin_latencies = [lat for lat, v in other if not isinstance(v, Exception)]
    bound = HANG_TIMEOUT_S * (RETRIES + 1) + MARGIN_S
    report(tmp_path / "hung_request.json", "hung request", {
        "response_timeout_s": HANG_TIMEOUT_S,
        "retries": RETRIES,
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

    assert e.value.status in (500, 507) and e.value.message.startswith("Worker died")
    assert HANG_TIMEOUT_S * (RETRIES + 1) <= elapsed <= bound, f"WorkerDied after {elapsed:.1f} s (bound {bound} s)"
    assert not lin_errors, lin_errors[:3]
    assert len(other) >= 10 and all(close(v, want) for _, v in other)
    assert max(lin_latencies) < 5.0, "the other model stalled while this one hung"
    # the hang model's fresh worker answers an ordinary request correctly
    with Client(home=shared.home, timeout=30, retries=0) as c:
        assert close(c.predict("hang", {"instances": rows})["predictions"][0], want)
