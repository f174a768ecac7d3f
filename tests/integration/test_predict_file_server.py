"""Whole-file prediction against the session server: `aiaas predict NAME --file F --out F --concurrency N`."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from aiaas_torch.files import predict_file
from aiaas_torch.runs import load_run

pytestmark = pytest.mark.serving


def _read(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_concurrent_chunks_come_back_in_input_order_with_ids(served, client, tmp_path):
    x = np.round(np.random.default_rng(3).uniform(-50, 50, 57), 3)
    src, out = tmp_path / "rows.csv", tmp_path / "pred.csv"
    src.write_text("x,row\n" + "".join(f"{v},r{i}\n" for i, v in enumerate(x)))
    report = predict_file(src, out, client, name="y2x", version="1.0", id_column="row", concurrency=4, chunk_rows=5)
    got = _read(out)
    assert report.rows == 57 and got[0] == ["row", "prediction"]  # not the target "y", which reads as the truth
    assert [r[0] for r in got[1:]] == [f"r{i}" for i in range(57)]
    want = load_run(served.origin).predict({"instances": x.reshape(-1, 1).tolist()})["predictions"]
    np.testing.assert_allclose([float(r[1]) for r in got[1:]], want, rtol=1e-5)
    np.testing.assert_allclose([float(r[1]) for r in got[1:]], 2 * x, rtol=1e-3)  # y = 2x, from the server


def test_raw_lines_numerals_json_lacks_and_another_version(client, tmp_path):
    src, out = tmp_path / "x.csv", tmp_path / "pred.csv"
    src.write_text("x\n1\n2.\n+3\n4\n")  # "2." and "+3" are CSV numbers but not JSON: resent as parsed values
    predict_file(src, out, client, name="y2x", version="2.0", concurrency=2, chunk_rows=2)
    np.testing.assert_allclose([float(r[0]) for r in _read(out)[1:]], [3, 6, 9, 12], rtol=1e-3)  # version 2.0: y = 3x


def test_a_bad_line_is_named_by_the_server_answer_and_nothing_is_written(client, tmp_path):
    src, out = tmp_path / "x.csv", tmp_path / "pred.csv"
    src.write_text("x\n" + "1\n" * 30 + "oops\n" + "2\n" * 10)
    with pytest.raises(ValueError, match=rf"^{src}, line 32: feature 'x': \"oops\" is not a number"):
        predict_file(src, out, client, name="y2x", concurrency=3, chunk_rows=4)
    assert list(tmp_path.iterdir()) == [src]
    src.write_text("x\n1e39\n")  # parsed by the client, refused by the server's contract
    with pytest.raises(ValueError, match=rf"^{src}, line 2: feature 'x': 1e\+39 is not a finite float32 number"):
        predict_file(src, out, client, name="y2x")


def test_cli_predicts_a_file_through_the_server(served, tmp_path):
    src, out = tmp_path / "x.jsonl", tmp_path / "pred.csv"
    src.write_text("".join(f'{{"x": {v}, "k": "{v}"}}\n' for v in range(1, 8)))
    cmd = [sys.executable, "-m", "aiaas_torch.cli", "predict", "y2x", "--home", str(served.home), "--version", "1.0",
           "--file", str(src), "--out", str(out), "--id", "k", "--concurrency", "3", "--chunk-rows", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = _read(out)
    assert [r[0] for r in rows] == ["k", *map(str, range(1, 8))]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], [2 * v for v in range(1, 8)], rtol=1e-3)
    r = subprocess.run(cmd[:4] + ["nomodel"] + cmd[5:], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nomodel" in r.stderr, r.stderr


def test_cli_predicts_a_file_without_home_finding_the_server_as_other_commands_do(served, tmp_path):
    """`aiaas predict NAME --file F --out O` exactly as the README writes it: no --home, the home found from
    $AIAAS_HOME as every other command finds it (it was an internal error: TypeError on a None home)."""
    src, out = tmp_path / "x.csv", tmp_path / "pred.csv"
    src.write_text("x\n1\n2\n")
    env = {**__import__("os").environ, "AIAAS_HOME": str(served.home)}
    cmd = [sys.executable, "-m", "aiaas_torch.cli", "predict", "y2x", "--version", "1.0", "--file", str(src), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose([float(r[0]) for r in _read(out)[1:]], [2, 4], rtol=1e-3)
    env["AIAAS_HOME"] = str(tmp_path / "nothing-here")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "no TorchServe" in r.stderr and "internal error" not in r.stderr, r.stderr
