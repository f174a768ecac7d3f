"""Whole-file prediction for imported models (tensor cards): `aiaas predict --local RUN_DIR --file X.npy|X.npz --out
Y.npy|Y.npz`, arrays read without unpickling anything. The same against a server: tests/integration/test_byom_serving.py."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from aiaas_torch import files
from aiaas_torch.cli import main


class _Marker:
    """An object whose unpickling creates a file: proof that a loader unpickled it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _npy(path, array) -> None:
    """Write an .npy file under any name (np.save would add .npy to it)."""
    with open(path, "wb") as f:
        np.save(f, array)


def _load(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_an_npz_with_one_array_per_input_gives_every_output_in_input_order(imported, tmp_path, capsys):
    two, two_run = imported.two, imported.two_run
    rng = np.random.default_rng(1)
    x, ids = rng.normal(size=(23, 2, 3)).astype(np.float32), rng.integers(0, 5, (23, 4))
    src, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, ids=ids, x=x)
    assert main(["predict", "--local", str(two_run), "--file", str(src), "--out", str(out), "--chunk-rows", "5"]) == 0
    assert "23 rows from" in capsys.readouterr().err
    got = _load(out)
    with torch.no_grad():
        y, total = two(torch.from_numpy(x), torch.from_numpy(ids))
    assert set(got) == {"y", "total"} and got["y"].dtype == np.float32 and got["total"].dtype == np.int64
    np.testing.assert_allclose(got["y"], y.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["total"], ids.sum(1))
    assert main(["predict", "--local", str(two_run), "--file", str(src), "--out", str(tmp_path / "out.npy")]) == 2
    err = capsys.readouterr().err
    assert "2 arrays" in err and ".npz" in err and err.count("\n") == 1, err


def test_an_npy_of_the_one_input_gives_labels_probabilities_and_logits(imported, tmp_path):
    lin, cls_run = imported.cls, imported.cls_run
    z = np.random.default_rng(2).normal(size=(7, 3))  # float64 samples for a float32 input: the contract takes them
    src, out = tmp_path / "z.npy", tmp_path / "p.npz"
    np.save(src, z)
    report = files.predict_file(src, out, cls_run)
    assert (report.rows, report.format) == (7, "npy")
    got = _load(out)
    with torch.no_grad():
        logits = lin(torch.from_numpy(z).float())
    np.testing.assert_allclose(got["output"], logits.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["probabilities"], torch.softmax(logits, 1).numpy(), rtol=1e-5, atol=1e-6)
    assert got["predictions"].tolist() == [["no", "yes"][i] for i in logits.argmax(1).tolist()]


def test_pickled_arrays_are_refused_without_unpickling(imported, tmp_path, capsys):
    two_run, cls_run = imported.two_run, imported.cls_run
    marker = tmp_path / "unpickled"
    objects = np.array([_Marker(marker)] * 3, dtype=object)
    npy, npz = tmp_path / "o.npy", tmp_path / "o.npz"
    np.save(npy, objects, allow_pickle=True)
    np.savez(npz, x=objects, ids=np.zeros((3, 4), dtype=np.int64))
    pickle.loads(pickle.dumps(_Marker(tmp_path / "works")))  # the marker does work when unpickled
    assert (tmp_path / "works").exists()
    for run, src in ((cls_run, npy), (two_run, npz)):
        assert main(["predict", "--local", str(run), "--file", str(src), "--out", str(tmp_path / "p.npz")]) == 2
        err = capsys.readouterr().err
        assert "pickle" in err and err.count("\n") == 1, err
        assert not marker.exists() and not (tmp_path / "p.npz").exists()


@pytest.mark.parametrize("write, expect", [
    (lambda p: np.savez(p, x=np.zeros((2, 2, 3), np.float32)), "missing input(s) ['ids']"),
    (lambda p: np.savez(p, x=np.zeros((2, 2, 3), np.float32), ids=np.zeros((2, 4), np.int64), w=np.zeros(2)), "not an input"),
    (lambda p: np.savez(p, x=np.zeros((2, 3, 2), np.float32), ids=np.zeros((2, 4), np.int64)), "'x'"),
    (lambda p: np.savez(p, x=np.zeros((2, 2, 3), np.float32), ids=np.zeros((3, 4), np.int64)), "3 samples"),
    (lambda p: np.savez(p, x=np.zeros((2, 2, 3), np.float32), ids=np.full((2, 4), 0.5)), "int64"),
    (lambda p: _npy(p, np.zeros((2, 2, 3), np.float32)), "2 inputs"),
    (lambda p: p.write_text("x,ids\n1,2\n"), ".npy or .npz"),
])  # fmt: skip
def test_arrays_that_do_not_fit_the_inputs_exit_2_naming_the_problem(imported, tmp_path, capsys, write, expect):
    two_run = imported.two_run
    src = tmp_path / "in.npz"
    write(src)
    assert main(["predict", "--local", str(two_run), "--file", str(src), "--out", str(tmp_path / "p.npz")]) == 2
    err = capsys.readouterr().err
    assert expect in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


def test_array_files_need_an_out_file_and_take_no_id(imported, tmp_path, capsys):
    cls_run = imported.cls_run
    src = tmp_path / "z.npy"
    np.save(src, np.zeros((2, 3), np.float32))
    assert main(["predict", "--local", str(cls_run), "--file", str(src)]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["predict", "--local", str(cls_run), "--file", str(src), "--out", str(tmp_path / "p.csv")]) == 2
    assert ".npy or .npz" in capsys.readouterr().err
    assert main(["predict", "--local", str(cls_run), "--file", str(src), "--out", str(tmp_path / "p.npz"), "--id", "k"]) == 2
    assert "--id" in capsys.readouterr().err
