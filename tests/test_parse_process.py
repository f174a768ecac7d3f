"""A large CSV file parsed in a second process (aiaas_torch.parsechild) while this one loads the model: the same
chunks, in the same order, with the same messages as parsed here; the process never outlives its parent.
(The size threshold is a parameter: these files are small and take the second process all the same.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from aiaas_torch import filerows, files, parsechild
from aiaas_torch.errors import InputError
from aiaas_torch.export import export_run
from aiaas_torch.data import from_arrays
from aiaas_torch.filerows import RowReader
from aiaas_torch.quantize import QuantConfig
from aiaas_torch.train import TrainConfig, train

CARD = {"input": {"features": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, "output": {"target": "y"}}


@pytest.fixture(scope="module")
def abc_run(tmp_path_factory):
    """A linear model on features a, b, c (float program only: no compile)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    result = train(from_arrays(X, X @ np.array([1.5, -2.0, 0.5]) + 1, ["a", "b", "c"], target="y"),
                   TrainConfig(model="linear", epochs=20, val_fraction=0.0, progress=False))
    return export_run(result, tmp_path_factory.mktemp("pp") / "abc", QuantConfig("none"), compile=False).run_dir


def _write(path, n: int, seed: int = 1, header: str = "a,b,c", extra=None) -> np.ndarray:
    """Write n rows of a, b, c (4 decimals) after a header; `extra` maps a row index to a line written instead."""
    X = np.round(np.random.default_rng(seed).normal(size=(n, 3)), 4)
    with open(path, "w", newline="") as f:
        f.write(header + "\n")
        if not extra:
            np.savetxt(f, X, fmt="%.4f", delimiter=",")
        for i, row in enumerate(X if extra else ()):
            f.write(extra.get(i, ",".join(map(str, row))) + "\n")
    return X


def _chunks(path, process: bool, **kwargs) -> tuple[list, RowReader]:
    reader = RowReader(path, CARD, chunk_rows=7, parse_process_bytes=0 if process else 1 << 40, **kwargs)
    return list(reader), reader


def _gone(pid: int) -> bool:
    """Whether a process has ended (no such process, or a zombie no one has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_parser_process_sends_the_same_rows_in_order_with_line_numbers_and_ids(tmp_path):
    src = tmp_path / "rows.csv"
    X = _write(src, 100, header="key,c,a,b")  # columns out of order, an id column
    text = src.read_text().splitlines()
    rows = ["key,c,a,b"] + [f"k{i},{c},{a},{b}" for i, (a, b, c) in enumerate(X)]
    rows[30:30] = ["", ""]  # blank lines inside a chunk keep the line numbers of the rows after them
    src.write_text("\n".join(rows) + "\n\n")
    assert len(text) == 101
    here, _ = _chunks(src, False, id_column="key")
    there, reader = _chunks(src, True, id_column="key")
    assert reader.parser is None and reader.parser_peak_rss_mb > 0  # it ran, ended, and was waited for
    assert [c.array.dtype for c in there] == [np.float32] * len(here)
    assert [c.lines for c in there] == [c.lines for c in here]
    assert [c.ids for c in there] == [c.ids for c in here] and there[-1].ids[-1] == "k99"
    assert there[4].lines == [30, 33, 34, 35, 36]  # lines 31 and 32 are blank
    np.testing.assert_array_equal(np.concatenate([c.array for c in there]), X.astype(np.float32))
    assert reader.done == src.stat().st_size  # progress reaches the end


@pytest.mark.parametrize("bad, expect", [
    ("1,x,3", "feature 'b': \"x\" is not a number"),
    ("1,2", "2 fields, expected 3 as in the header"),
    ("1,2,1e39", "feature 'c': 1e+39 is not a finite float32 number"),
    ('1,"2,3', "malformed CSV"),
])
def test_a_bad_line_in_the_middle_is_named_exactly_as_when_parsed_here(abc_run, tmp_path, monkeypatch, bad, expect):
    src, out = tmp_path / "bad.csv", tmp_path / "pred.csv"
    _write(src, 60, extra={44: bad})  # line 46, in the 7th chunk of 7
    started = []
    monkeypatch.setattr(parsechild, "start", lambda *a, _start=parsechild.start: started.append(_start(*a)) or started[-1])
    messages = []
    for threshold in (1 << 40, 0):
        monkeypatch.setattr(filerows, "PARSE_PROCESS_BYTES", threshold)
        with pytest.raises(InputError) as e:
            files.predict_file(src, out, str(abc_run), chunk_rows=7)
        messages.append(str(e.value))
        assert list(tmp_path.iterdir()) == [src]  # nothing written
    assert messages[0] == messages[1] and messages[1].startswith(f"{src}, line 46: ") and expect in messages[1]
    (parser,) = started
    assert parser.proc.returncode is not None and _gone(parser.proc.pid)  # no orphan after the error


def test_predictions_through_the_parser_process_equal_those_parsed_here(abc_run, tmp_path, monkeypatch):
    src = tmp_path / "rows.csv"
    _write(src, 500)
    outs = []
    for threshold in (1 << 40, 0):
        monkeypatch.setattr(filerows, "PARSE_PROCESS_BYTES", threshold)
        report = files.predict_file(src, tmp_path / "o.csv", str(abc_run), chunk_rows=64)
        assert (report.parser_peak_rss_mb is None) == (threshold > 0)
        outs.append((tmp_path / "o.csv").read_text())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 501


def test_text_that_is_not_utf8_in_the_middle_is_named_exactly_as_when_parsed_here(tmp_path):
    src = tmp_path / "rows.csv"
    _write(src, 3000)
    data = src.read_bytes()
    at = data.index(b"\n", len(data) // 2) + 1
    src.write_bytes(data[:at] + b"\xff\xfe" + data[at:])
    messages = []
    for process in (False, True):
        with pytest.raises(InputError) as e:
            _chunks(src, process)
        messages.append(str(e.value))
    assert messages[0] == messages[1] and "not UTF-8 text" in messages[0]


def test_when_the_parser_process_dies_the_rest_is_read_here_in_order(tmp_path):
    src = tmp_path / "rows.csv"
    X = _write(src, 200_000)  # more than the pipe holds: the process is still writing when it is killed
    reader = RowReader(src, CARD, chunk_rows=1000, parse_process_bytes=0)
    it = iter(reader)
    got = [next(it)]
    pid = reader.parser.proc.pid
    os.kill(pid, signal.SIGKILL)
    got += list(it)
    assert any(c.array.dtype == np.float64 for c in got)  # read here after the kill
    assert [n for c in got for n in c.lines] == list(range(2, 200_002))
    np.testing.assert_array_equal(np.concatenate([np.asarray(c.array, np.float32) for c in got]), X.astype(np.float32))
    assert _gone(pid)


def test_a_parser_process_that_cannot_start_leaves_the_file_to_this_process(tmp_path, monkeypatch):
    src = tmp_path / "rows.csv"
    X = _write(src, 50)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    got, reader = _chunks(src, True)
    assert reader.parser_peak_rss_mb is None and got[0].array.dtype == np.float64
    np.testing.assert_array_equal(np.concatenate([c.array for c in got]), X)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_the_parser_process_ends_with_its_parent_on_ctrl_c_or_a_kill(tmp_path, sig):
    src = tmp_path / "rows.csv"
    _write(src, 200_000)
    script = textwrap.dedent(f"""
        import sys, time
        from aiaas_torch.filerows import RowReader
        reader = RowReader({str(src)!r}, {CARD!r}, chunk_rows=1000, parse_process_bytes=0)
        it = iter(reader)
        next(it)
        print(reader.parser.proc.pid, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        assert not _gone(pid)  # blocked on the full pipe
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid)
    finally:
        proc.kill()
        proc.wait()


def test_an_empty_id_alone_in_its_chunk_is_still_an_id(tmp_path):
    src = tmp_path / "rows.csv"
    src.write_text("key,a,b,c\n,1,2,3\nk2,4,5,6\n")
    here, _ = _chunks(src, False, id_column="key")
    there, _ = _chunks(src, True, id_column="key")
    assert [c.ids for c in there] == [c.ids for c in here] == [["", "k2"]]
    there = list(RowReader(src, CARD, chunk_rows=1, parse_process_bytes=0, id_column="key"))
    assert [c.ids for c in there] == [[""], ["k2"]]


def test_the_parser_process_ends_when_the_model_fails_to_load(abc_run, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(abc_run, run)
    program = next(p for p in run.iterdir() if p.suffix == ".pt2")
    program.write_bytes(program.read_bytes() + b"tampered")
    src = tmp_path / "rows.csv"
    _write(src, 2000)
    started = []
    monkeypatch.setattr(parsechild, "start", lambda *a, _start=parsechild.start: started.append(_start(*a)) or started[-1])
    monkeypatch.setattr(filerows, "PARSE_PROCESS_BYTES", 0)
    with pytest.raises(InputError, match="SHA-256|sha256|checksum|changed"):
        files.predict_file(src, tmp_path / "o.csv", str(run))
    (parser,) = started  # started before the model load, which then failed
    assert parser.proc.returncode is not None and _gone(parser.proc.pid)


def test_the_parse_child_keeps_float32s_bound_though_it_cannot_import_it():
    # issue 24: one bound of "fits in float32" (contract_common.FLOAT32_MAX); the child, a plain script, computes it
    # from numpy, so both sides are checked here: a value float32 holds is plain, one beyond it goes to the general path
    from aiaas_torch.handlers.contract_common import FLOAT32_MAX

    assert parsechild.FLOAT32_MAX == FLOAT32_MAX == float(np.finfo(np.float32).max)
    arr, _ = parsechild.plain_numbers(["1,3.4028e38\n", "2,-3.4028e38\n"], [0, 1], None, 2, False)
    assert arr[:, 1].tolist() == [3.4028e38, -3.4028e38]
    assert parsechild.plain_numbers(["1,3.4028235e38\n"], [0, 1], None, 2, False) is None
