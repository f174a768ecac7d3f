"""Promise 8: a killed `aiaas train` resumes to bit-identical weights; a crash mid-export or mid-package never
leaves a run directory that loads or a NAME-VERSION.mar in the store.

The kills are real: SIGKILL of a subprocess, at a moment chosen by polling for its checkpoint file or by a hook
in the child that announces "about to ..." on stdout and then waits to be killed.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aiaas_torch.archive import package
from aiaas_torch.runs import load_run
from aiaas_torch.train import load_checkpoint

from rel_helpers import tree_listing

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "aiaas_torch.cli"]
EPOCHS = 150
EVERY = 10


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 1 + rng.normal(0, 0.1, 2000)
    p = tmp_path_factory.mktemp("train_data") / "d.csv"
    p.write_text("a,b,c,d,y\n" + "".join(",".join(f"{v:.5f}" for v in (*x, t)) + "\n" for x, t in zip(X, y)))
    return p


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [*CLI, "train", str(data), "--target", "y", "--out", str(out), "--epochs", str(EPOCHS), "--batch-size", "32",
            "--lr", "0.01", "--momentum", "0.9", "--lr-schedule", "cosine", "--seed", "3", "--checkpoint-every", str(EVERY),
            "--no-compile", "--no-progress", "--quantize", "none", *extra]  # fmt: skip


def test_sigkill_mid_training_then_resume_gives_bit_identical_weights(data_csv, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    periodic = cut.with_name(f".{cut.name}.checkpoint.pt")  # where `aiaas train` keeps its periodic checkpoint
    uninterrupted = subprocess.Popen(_train_cmd(data_csv, full), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_train_cmd(data_csv, cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not periodic.exists() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert periodic.exists() and victim.poll() is None, "no periodic checkpoint before the run ended"
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    state = load_checkpoint(periodic)
    assert not state["done"] and 0 < state["epoch"] < EPOCHS, state["epoch"]
    assert not cut.exists()  # killed before export: no run directory at all
    _, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err

    resumed = subprocess.run(_train_cmd(data_csv, cut, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(full / "checkpoint.pt")
    b = load_checkpoint(cut / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS and b["done"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "resumed weights differ"
    assert a["history"] == b["history"]
    card_a, card_b = (json.loads((d / "model.json").read_text()) for d in (full, cut))
    assert card_a["model"]["coefficients"] == card_b["model"]["coefficients"]
    assert not periodic.exists()  # the periodic checkpoint is gone once the run directory holds the final one


# --------------------------------------------------------------------------------------------- kill mid-export / mid-package

_CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from aiaas_torch import archive, export, rundir
    from aiaas_torch.data import from_arrays
    from aiaas_torch.quantize import QuantConfig
    from aiaas_torch.train import TrainConfig, train

    where, target = sys.argv[1], sys.argv[2]

    def die_here(label, real):
        def hooked(*args, **kwargs):
            if label == "mid-swap":
                run_dir = args[1]
                os.replace(run_dir, run_dir.with_name("." + run_dir.name + ".old-killed"))  # first half of the swap
            elif label == "after-zip":
                real(*args, **kwargs)
            print("about to " + label, flush=True)
            time.sleep(600)
        return hooked

    if where in ("before-card", "mid-swap"):
        X = np.arange(1, 6, dtype=float).reshape(-1, 1)
        result = train(from_arrays(X, 2 * X[:, 0], ["x"]), TrainConfig(epochs=50, val_fraction=0.0, progress=False))
        if where == "before-card":
            rundir.write_json_atomic = die_here(where, rundir.write_json_atomic)
        else:
            rundir.replace_run_dir = die_here(where, rundir.replace_run_dir)
        export.export_run(result, target, QuantConfig("none"), compile=False)
    else:
        archive.verify_archive = die_here(where, archive.verify_archive)
        archive.package(sys.argv[3], "lin", "1.0", target)
    print("finished", flush=True)
""")


def _run_until_announced(where: str, target: Path, *extra: str) -> None:
    """Start the child, wait for its "about to WHERE" line, SIGKILL it."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, where, str(target), *extra], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        line = child.stdout.readline()
        assert line.strip() == f"about to {where}", line
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


@pytest.mark.parametrize("where", ["before-card", "mid-swap"])
def test_sigkill_mid_export_leaves_no_run_directory_that_loads(runs, tmp_path, where):
    run_dir = tmp_path / "run"
    if where == "mid-swap":
        shutil.copytree(runs.lin, run_dir)  # a previous run directory is being replaced
    _run_until_announced(where, run_dir)
    if run_dir.exists():
        with pytest.raises(ValueError):
            load_run(run_dir)
    visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert visible == (["run"] if run_dir.exists() else []), visible
    for hidden in (p for p in tmp_path.iterdir() if p.name.startswith(".")):  # staging left by the kill
        assert hidden.is_dir()
    r = subprocess.run([*CLI, "package", str(run_dir), "--name", "lin", "--model-store", str(tmp_path / "store")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "model.json" in r.stderr, r.stderr
    assert not list(tmp_path.glob("store/*.mar"))


def test_sigkill_mid_package_leaves_no_archive_and_keeps_the_previous_one(runs, tmp_path):
    store = tmp_path / "store"
    _run_until_announced("after-zip", store, str(runs.lin))
    assert not (store / "lin-1.0.mar").exists()
    assert all(p.name.startswith(".") for p in store.iterdir())  # only the hidden staging dir the kill left

    previous = package(runs.other, "lin", "1.0", store).path  # an older good archive under the same name
    listing = {k: v for k, v in tree_listing(store).items() if not k.startswith(".")}
    _run_until_announced("after-zip", store, str(runs.lin))
    assert {k: v for k, v in tree_listing(store).items() if not k.startswith(".")} == listing
    assert previous.exists()


def test_an_exception_mid_package_leaves_nothing(runs, tmp_path, monkeypatch):
    from aiaas_torch import archive

    store = tmp_path / "store"
    store.mkdir()
    run_listing = tree_listing(runs.lin)

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(archive, "_deterministic_zip", boom)
    with pytest.raises(OSError, match="disk full"):
        package(runs.lin, "lin", "1.0", store)
    assert list(store.iterdir()) == []
    assert tree_listing(runs.lin) == run_listing  # the run directory is read, never written
