"""Session fixtures for the reliability tests: real run directories and one real TorchServe shared by modules.

The shared server serves two models from one store on 127.0.0.1 (free ports):
  lin   the 3-feature linear model, 2 workers (a worker can be killed while the other answers)
  hang  the same run directory behind tests/fixtures/hang_handler.py, 1 worker, responseTimeout 2 s
  batch8  the same run directory behind tests/fixtures/batch_probe_handler.py, 1 worker, batchSize 8, maxBatchDelay
        2 s: 8 concurrent requests are answered in one batch, and each answer says which batch it was part of
Tests that kill the Java process or need other settings start their own instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from aiaas_torch import serving as server
from aiaas_torch.archive import ServingConfig, package
from aiaas_torch.runs import load_run

from rel_helpers import (BATCH_PROBE_HANDLER, HANG_HANDLER, HANG_TIMEOUT_S, PROBE_BATCH, PROBE_DELAY_MS, linear_run,
                         running)  # fmt: skip



@dataclass
class Runs:
    """Run directories built once per session."""

    lin: Path  # y = 1.5a − 2b + 0.5c + 3
    other: Path  # y = −a + b + 2c, same features: a valid model to swap in


@dataclass
class Shared:
    """The shared server: its home, store, archives, ServerInfo and a local copy of lin to compute answers."""

    home: Path
    store: Path
    archives: dict
    info: server.ServerInfo
    local: object  # runs.LocalModel of runs.lin

    def expect(self, rows: list[list[float]]) -> list[float]:
        """Return the local model's predictions for rows (what the server must answer)."""
        return [float(v[0]) for v in self.local.forward(rows)]


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Runs:
    """Two trained, exported run directories (float programs, no compile)."""
    root = tmp_path_factory.mktemp("rel_runs")
    return Runs(linear_run(root / "lin"), linear_run(root / "other", weights=(-1.0, 1.0, 2.0), bias=0.0, seed=1))


@pytest.fixture(scope="session")
def shared(runs, tmp_path_factory) -> Shared:
    """Yield the shared TorchServe (lin with 2 workers, hang and batch8 with 1); stop it and reap it afterwards."""
    root = tmp_path_factory.mktemp("rel_shared")
    store = root / "store"
    archives = {
        "lin": package(runs.lin, "lin", "1.0", store,
                       serving=ServingConfig(workers=2, batch_size=8, max_batch_delay_ms=5, response_timeout_s=30)).path,
        "hang": package(runs.lin, "hang", "1.0", store, handler=HANG_HANDLER,
                        serving=ServingConfig(workers=1, batch_size=1, max_batch_delay_ms=0, response_timeout_s=HANG_TIMEOUT_S)).path,
        "batch8": package(runs.lin, "batch8", "1.0", store, handler=BATCH_PROBE_HANDLER,
                          serving=ServingConfig(workers=1, batch_size=PROBE_BATCH, max_batch_delay_ms=PROBE_DELAY_MS)).path,
    }  # fmt: skip
    home = root / "home"
    with running(home, store, archives) as info:
        yield Shared(home, store, archives, info, load_run(runs.lin))
