"""Promise 4: SIGKILL of the TorchServe Java process under load.

Every client gets the typed ConnectionFailed within its timeout (no hang); the workers go with the server;
`server.start` with the same home and store brings the same model back; the model store is byte-for-byte intact.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import psutil
import pytest

from aiaas_torch import serving as server
from aiaas_torch.archive import verify_archive
from aiaas_torch.client import Client, ConnectionFailed

from rel_helpers import close, group_pids, kill_leftovers, report, stop_instance, tree_listing

pytestmark = [pytest.mark.serving, pytest.mark.slow]

CLIENTS = 8
CLIENT_TIMEOUT_S = 5.0
KILL_AFTER = 200
MAX_REQUESTS_PER_CLIENT = 2000


def test_sigkill_of_the_server_under_load_fails_fast_and_a_restart_serves_again(shared, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy2(shared.archives["lin"], store)
    home = tmp_path / "home"
    listing = tree_listing(store)
    rows = [[0.5, 1.5, -2.5]]
    want = shared.expect(rows)[0]

    info = server.start_server(home, store, {"lin": shared.archives["lin"].name}, free_ports=True, ready_timeout=120)
    pids = group_pids(info)
    restarted = None
    try:
        worker_pids = {p for p in pids if p not in (info.pid, info.pgid)}
        answered = [0]
        outcome: dict[int, tuple[float, BaseException | None]] = {}  # client → (when its call failed, error)
        lock = threading.Lock()

        def load(k: int) -> None:
            with Client(home=home, request_timeout=CLIENT_TIMEOUT_S) as c:  # default retries and backoff
                for _ in range(MAX_REQUESTS_PER_CLIENT):
                    try:
                        assert close(c.predict("lin", {"instances": rows})["predictions"][0], want)
                    except Exception as e:  # noqa: BLE001 - the first failure ends this client
                        outcome[k] = (time.monotonic(), e)
                        return
                    with lock:
                        answered[0] += 1
                outcome[k] = (time.monotonic(), None)

        threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while answered[0] < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.01)
        assert answered[0] >= KILL_AFTER
        t_kill = time.monotonic()
        os.kill(info.pid, signal.SIGKILL)
        for t in threads:
            t.join(timeout=CLIENT_TIMEOUT_S * 4)
        assert not any(t.is_alive() for t in threads), "a client hung after the server died"

        errors = {k: e for k, (_, e) in outcome.items()}
        after = {k: round(when - t_kill, 3) for k, (when, _) in outcome.items()}
        report(tmp_path / "server_kill.json", "SIGKILL of the Java process under load", {
            "answered_before_kill": answered[0], "clients": CLIENTS, "client_timeout_s": CLIENT_TIMEOUT_S,
            "error_types": sorted({type(e).__name__ for e in errors.values()}), "slowest_error_after_kill_s": max(after.values()),
        })  # fmt: skip
        assert all(isinstance(e, ConnectionFailed) for e in errors.values()), errors
        assert all(0 <= s <= CLIENT_TIMEOUT_S for s in after.values()), after
        with Client(home=home, request_timeout=CLIENT_TIMEOUT_S) as c:  # a fresh call fails fast and typed too
            t0 = time.monotonic()
            with pytest.raises(ConnectionFailed):
                c.predict("lin", {"instances": rows})
            assert time.monotonic() - t0 <= CLIENT_TIMEOUT_S

        # the workers go with the server (nothing left holding memory), and the launcher is reaped
        _, alive = psutil.wait_procs([psutil.Process(p) for p in worker_pids if psutil.pid_exists(p)], timeout=15)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
        try:
            psutil.Process(info.pgid).wait(timeout=10)  # our child: reap it (it exits when Java is gone)
        except psutil.Error:
            pass
        assert server.server_status(home)["running"] is False
        assert tree_listing(store) == listing  # no partial or extra file in the store

        restarted = server.start_server(home, store, {"lin": shared.archives["lin"].name}, free_ports=True, ready_timeout=120)
        pids |= group_pids(restarted)
        assert restarted.pid != info.pid
        with Client(home=home, request_timeout=30) as c:
            assert close(c.predict("lin", {"instances": rows})["predictions"][0], want)
            assert c.describe("lin")[0]["customizedMetadata"]["serving"]["name"] == "lin"
        assert tree_listing(store) == listing
        verify_archive(store / shared.archives["lin"].name)
    finally:
        stop_instance(home, restarted or info)
        kill_leftovers(pids)
