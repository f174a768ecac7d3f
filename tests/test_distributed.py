"""Distributed training: `aiaas train` under torchrun (2 processes, gloo, loopback) matches one process.

Why the tolerance: both runs see exactly the same global mini-batches (DistributedSampler with the same seed; one
process uses it with one replica), so the only difference is float32 summation order — DDP averages two half-batch
gradient means instead of taking one mean. Measured here: 6e-8 absolute on weights of size ~4.5 after 5 epochs;
we allow 1e-5 relative, far above rounding noise and far below any real difference (a wrong shard, a missing
all-reduce or a different batch order moves the weights by 1e-2 or more).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aiaas_torch.data import load_csv
from aiaas_torch.runs import load_run
from aiaas_torch.serving import free_ports
from aiaas_torch.train import TrainConfig, train

pytestmark = pytest.mark.slow
SETTINGS = ["--batch-size", "64", "--epochs", "5", "--lr", "0.05", "--seed", "3", "--no-compile", "--no-progress"]


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 5))  # 640 training rows: an even split over 2 ranks, 10 full global batches of 64
    y = X @ np.arange(1, 6) + 0.5 + rng.normal(0, 0.1, 800)
    p = tmp_path_factory.mktemp("ddp") / "d.csv"
    p.write_text("a,b,c,d,e,y\n" + "".join(",".join(f"{v:.6f}" for v in (*x, t)) + "\n" for x, t in zip(X, y)))
    return p


def _single_process_weights(csv_path: Path) -> dict:
    cfg = TrainConfig(batch_size=64, epochs=5, lr=0.05, seed=3, progress=False)
    return train(load_csv(csv_path, "y"), cfg).model.state_dict()


def _check_run(run: Path, stdout: str, reference: dict) -> None:
    card = json.loads((run / "model.json").read_text())
    assert card["training"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert card["data"]["train_rows"] == 640
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    for k, v in reference.items():
        assert torch.allclose(ck["model"][k], v, rtol=1e-5, atol=1e-6), (k, (ck["model"][k] - v).abs().max())
    load_run(run)  # complete: the card's hashes match every file
    assert stdout.count("run directory:") == 1  # rank 0 alone wrote and reported
    assert [p.name for p in run.parent.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_torchrun_two_processes_matches_single_process(csv_path, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_ports(1)[0]),
           "-m", "aiaas_torch.cli", "train", str(csv_path), "--target", "y", "--out", str(run), *SETTINGS]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    _check_run(run, out.stdout, _single_process_weights(csv_path))


def test_distributed_flag_relaunches_under_torchrun(csv_path, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "aiaas_torch.cli", "train", str(csv_path), "--target", "y", "--out", str(run),
           "--distributed", "--nproc-per-node", "2", *SETTINGS]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    _check_run(run, out.stdout, _single_process_weights(csv_path))


def test_a_different_shard_or_order_would_be_caught(csv_path):
    """The tolerance above is meaningful: another seed's batch order moves the weights far beyond it."""
    a = _single_process_weights(csv_path)
    b = train(load_csv(csv_path, "y"), TrainConfig(batch_size=64, epochs=5, lr=0.05, seed=4, progress=False)).model.state_dict()
    assert not torch.allclose(a["1.weight"], b["1.weight"], rtol=1e-5, atol=1e-6)


def test_uneven_shards_and_batches_still_match_single_process(tmp_path):
    """641 training rows and batch 45 over 2 ranks: neither divides evenly, and the run still equals one process's."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(801, 5))
    y = X @ np.arange(1, 6) + 0.5 + rng.normal(0, 0.1, 801)
    data = tmp_path / "uneven.csv"
    data.write_text("a,b,c,d,e,y\n" + "".join(",".join(f"{v:.6f}" for v in (*x, t)) + "\n" for x, t in zip(X, y)))
    settings = ["--batch-size", "45", "--epochs", "5", "--lr", "0.05", "--seed", "3", "--no-compile", "--no-progress"]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "aiaas_torch.cli", "train", str(data), "--target", "y", "--out", str(run),
           "--distributed", "--nproc-per-node", "2", *settings]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    card = json.loads((run / "model.json").read_text())
    assert card["data"]["train_rows"] % 2 == 1 and card["data"]["train_rows"] % 45 != 0
    single = train(load_csv(data, "y"), TrainConfig(batch_size=45, epochs=5, lr=0.05, seed=3, progress=False))
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    for k, v in single.model.state_dict().items():
        assert torch.allclose(ck["model"][k], v, rtol=1e-5, atol=1e-6), (k, (ck["model"][k] - v).abs().max())
    assert abs(card["training"]["history"]["train_loss"][-1] - single.history[-1]["train_loss"]) < 1e-6 * max(1.0, single.history[-1]["train_loss"])
