"""Whole-file prediction in this process (`aiaas predict --local RUN_DIR --file F --out F`, `aiaas_torch.predict_file`):
formats told apart by content, input order and ids kept, every error naming the line, nothing written on error,
memory bounded. The same against a server: tests/integration/test_predict_file_server.py."""

from __future__ import annotations

import csv
import json
import tracemalloc

import numpy as np
import pytest

import aiaas_torch
from aiaas_torch import filerows, files
from aiaas_torch.cli import main
from aiaas_torch.data import from_arrays
from aiaas_torch.export import export_run
from aiaas_torch.quantize import QuantConfig
from aiaas_torch.runs import load_run
from aiaas_torch.train import TrainConfig, train

W = np.array([1.5, -2.0, 0.5])


@pytest.fixture(scope="module")
def abc_run(tmp_path_factory):
    """A linear model of y = 1.5a - 2b + 0.5c + 1 (float program only: no compile)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    result = train(from_arrays(X, X @ W + 1, ["a", "b", "c"], target="y"),
                   TrainConfig(model="linear", epochs=300, lr=0.1, val_fraction=0.0, progress=False))
    return export_run(result, tmp_path_factory.mktemp("pf") / "abc", QuantConfig("none"), compile=False).run_dir


@pytest.fixture(scope="module")
def model(abc_run):
    """The run directory loaded once."""
    return load_run(abc_run)


@pytest.fixture(scope="module")
def kinds_run(tmp_path_factory):
    """A 2-class logistic model on feature u (labels "no", "yes")."""
    u = np.linspace(-3, 3, 200)
    ds = from_arrays(u.reshape(-1, 1), np.where(u > 0, "yes", "no"), ["u"], target="answer")
    result = train(ds, TrainConfig(model="logistic", epochs=200, lr=0.5, progress=False))
    return export_run(result, tmp_path_factory.mktemp("pf") / "kinds", QuantConfig("none"), compile=False).run_dir


def _rows(n: int, seed: int = 1) -> np.ndarray:
    return np.round(np.random.default_rng(seed).normal(size=(n, 3)), 4)


def _read(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_in_any_column_order_with_ids_and_target_keeps_order_and_ids(model, tmp_path):
    X = _rows(103)
    src = tmp_path / "rows.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["c", "key", "a", "y", "b"])  # columns out of order, the target column present and ignored
        for i, (a, b, c) in enumerate(X):
            w.writerow([c, f"id-{i:03d}", a, "999", b])
    out = tmp_path / "pred.csv"
    report = files.predict_file(src, out, model, id_column="key", chunk_rows=10)  # 11 chunks
    assert (report.rows, report.format) == (103, "csv")
    got = _read(out)
    assert got[0] == ["key", "prediction"]  # not "y": the input's own `y` column (the truth) would be mistaken for it
    assert [r[0] for r in got[1:]] == [f"id-{i:03d}" for i in range(103)]
    want = model.predict({"instances": X.tolist()})["predictions"]
    np.testing.assert_allclose([float(r[1]) for r in got[1:]], want, rtol=1e-6)
    np.testing.assert_allclose([float(r[1]) for r in got[1:]], X @ W + 1, atol=0.05)  # and they are y = 1.5a - 2b + 0.5c + 1


def test_a_chunk_of_numbers_and_a_chunk_of_other_numerals_give_the_same_answers(model, tmp_path):
    """The fast path (numpy) and the general path (cell by cell) must agree: "+1." and "1e0" are numbers too."""
    plain, odd = tmp_path / "plain.csv", tmp_path / "odd.csv"
    plain.write_text("a,b,c\n1,2,3\n-0.5,0.25,4\n")
    odd.write_text("a,b,c\n+1.,2e0, 3 \n-.5,0.25,4\n")  # loadtxt takes these, so also check a chunk with a quoted cell
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('a,b,c\n"1",2,3\n-0.5,0.25,"4"\n')
    outs = []
    for src in (plain, odd, quoted):
        files.predict_file(src, tmp_path / f"{src.stem}.out", model)
        outs.append(_read(tmp_path / f"{src.stem}.out"))
    assert outs[0] == outs[1] == outs[2] and len(outs[0]) == 3
    blanks = tmp_path / "blanks.csv"
    blanks.write_text("a,b,c\n\n1,2,3\n\n-0.5,0.25,4\n\n\n")
    files.predict_file(blanks, tmp_path / "blanks.out", model)
    assert _read(tmp_path / "blanks.out") == outs[0]


@pytest.mark.parametrize("body, line, expect", [
    ("a,b,c\n1,2,3\n4,5,6\n7,x,9\n", 4, "feature 'b': \"x\" is not a number"),
    ("a,b,c\n1,2,3\n\n4,,6\n", 4, "feature 'b': null is not a number"),
    ("a,b,c\n1,2,3\n4,5\n", 3, "2 fields, expected 3 as in the header"),
    ("a,b,c\n1,2,3\n1,nan,3\n", 3, "feature 'b': nan is not a finite float32 number"),
    ("a,b,c\n1,2,3\n1,2,1e39\n", 3, "feature 'c': 1e+39 is not a finite float32 number"),
    ("a,b,c\n1,2,3\n1,\"2,3\n", 3, "malformed CSV"),
    ("a,b,c\n\n1,2,3\n\n1,\"2,3\n", 5, "malformed CSV"),  # blank lines hold no row but count as lines
])
def test_every_bad_line_is_named_and_nothing_is_written(model, tmp_path, body, line, expect):
    src, out = tmp_path / "bad.csv", tmp_path / "pred.csv"
    src.write_text(body)
    for chunk_rows in (1, 1000):  # alone in its chunk, and among good rows
        with pytest.raises(ValueError) as e:
            files.predict_file(src, out, model, chunk_rows=chunk_rows)
        assert str(e.value).startswith(f"{src}, line {line}: ") and expect in str(e.value), str(e.value)
        assert list(tmp_path.iterdir()) == [src]  # no output, no temporary file


def test_header_problems_name_what_was_expected(model, tmp_path):
    cases = {
        "1,2,3\n4,5,6\n": "line 1: expected a header row naming the features ['a', 'b', 'c'], got numbers",
        "a,b\n1,2\n": "feature column(s) ['c'] missing; the model needs ['a', 'b', 'c']",
        "a,b,c,zz\n1,2,3,4\n": "column(s) ['zz'] are not features of the model",
        "a,b,c,a\n1,2,3,4\n": "duplicate column name 'a'",
        "": "empty file; expected CSV with a header row, JSON Lines (one row per line) or a JSON array of rows",
    }
    for body, expect in cases.items():
        src = tmp_path / "h.csv"
        src.write_text(body)
        with pytest.raises(ValueError, match=expect.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            files.predict_file(src, tmp_path / "o.csv", model)
    binary = tmp_path / "rows.csv"
    binary.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(ValueError, match="binary data; expected CSV with a header row, JSON Lines"):
        files.predict_file(binary, None, model)
    with pytest.raises(ValueError, match="no id column 'key'"):
        (tmp_path / "h.csv").write_text("a,b,c\n1,2,3\n")
        files.predict_file(tmp_path / "h.csv", None, model, id_column="key")


def test_json_lines_and_json_arrays_are_told_apart_by_content(model, tmp_path, capsys):
    X = _rows(9)
    want = [f"{p!r}" for p in model.predict({"instances": X.tolist()})["predictions"]]
    forms = {
        "objects.txt": "\n".join(json.dumps({"id": i, "b": b, "a": a, "c": c}) for i, (a, b, c) in enumerate(X)) + "\n",
        "lists.csv": "\n".join(json.dumps(r) for r in X.tolist()) + "\n\n",  # the extension says nothing
        "array.json": json.dumps(X.tolist(), indent=1),
        "array_of_objects": json.dumps([{"a": a, "b": b, "c": c} for a, b, c in X]),
    }
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
        ids = "id" if name == "objects.txt" else None  # carried through; without --id it is an unknown feature
        report = files.predict_file(tmp_path / name, None, model, id_column=ids, chunk_rows=4)
        lines = capsys.readouterr().out.splitlines()
        # the predictions column is `prediction`, not the target's name: a header `y` read as the truth (issue 25)
        assert lines == (["id,prediction", *[f"{i},{p}" for i, p in enumerate(want)]] if ids else ["prediction", *want]), name
        assert report.format == {"objects.txt": "jsonl", "lists.csv": "jsonl"}.get(name, "json-array")
    with pytest.raises(ValueError, match=r"objects.txt, line 1: unknown feature\(s\) \['id'\]"):
        files.predict_file(tmp_path / "objects.txt", None, model)


def test_a_json_array_is_read_block_by_block_with_line_numbers(model, tmp_path, monkeypatch):
    monkeypatch.setattr(filerows, "_JSON_BLOCK", 7)  # rows and numbers cut across block boundaries
    X = _rows(20)
    src = tmp_path / "rows.json"
    src.write_text("[\n" + ",\n".join(json.dumps(r) for r in X.tolist()) + "\n]\n")
    out = tmp_path / "out.csv"
    assert files.predict_file(src, out, model, chunk_rows=3).rows == 20
    np.testing.assert_allclose([float(r[0]) for r in _read(out)[1:]], model.predict({"instances": X.tolist()})["predictions"])
    bad = X.tolist()
    bad[12][1] = "oops"
    src.write_text("[\n" + ",\n".join(json.dumps(r) for r in bad) + "\n]\n")
    with pytest.raises(ValueError, match=rf"^{src}, line 14: feature 'b': \"oops\" is not a number"):
        files.predict_file(src, out, model, chunk_rows=5)
    src.write_text("[[1, 2, 3],\n [4, 5, 6]\n")
    with pytest.raises(ValueError, match="the JSON array is not closed"):
        files.predict_file(src, out, model)


@pytest.mark.parametrize("text, expect", [
    ('{"a": 1, "b": 2, "c": 3}\n{"a": 1, "b": 2}\n', r"line 2: missing feature\(s\) \['c'\]"),
    ('{"a": 1, "b": 2, "c": 3}\n[1, 2, 3]\n', "line 2: mixes object rows and array rows; use one form"),
    ('[1, 2, 3]\n[1, 2, 3\n', "line 2: not a JSON row"),
    ('{\n  "instances": [[1, 2, 3]]\n}\n', r"line 1: not a JSON row .* \(a request body goes in --body, not --file\)"),
    ('[1, 2, 3]\n"x"\n', "line 2: expected a row"),
])
def test_json_errors_name_the_line(model, tmp_path, text, expect):
    src = tmp_path / "rows.jsonl"
    src.write_text(text)
    with pytest.raises(ValueError, match=expect):
        files.predict_file(src, tmp_path / "o.csv", model)


def test_a_classifier_writes_the_label_and_one_probability_column_per_class(kinds_run, tmp_path):
    src = tmp_path / "u.csv"
    src.write_text("u\n-2\n2.5\n")
    out = tmp_path / "o.csv"
    aiaas_torch.predict_file(src, out, str(kinds_run))  # the public name, with a run directory
    rows = _read(out)
    assert rows[0] == ["prediction", "p_no", "p_yes"]  # `prediction`, not the target `answer` (the truth's name)
    assert [r[0] for r in rows[1:]] == ["no", "yes"]
    assert all(abs(float(r[1]) + float(r[2]) - 1) < 1e-6 for r in rows[1:])


def test_memory_stays_bounded_whatever_the_file_size(model, tmp_path):
    """A file 10× larger must not need 10× the memory: at most a few chunks are held at once."""
    peaks = []
    for n in (5_000, 50_000):
        src = tmp_path / f"r{n}.csv"
        with open(src, "w") as f:
            f.write("a,b,c\n")
            np.savetxt(f, _rows(n), fmt="%.4f", delimiter=",")
        tracemalloc.start()
        files.predict_file(src, tmp_path / "o.csv", model, chunk_rows=1_000)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(_read(tmp_path / "o.csv")) == n + 1
    assert peaks[1] < 1.5 * peaks[0], peaks


def test_cli_predicts_a_file_and_exits_2_naming_a_bad_line(abc_run, tmp_path, capsys):
    src, out = tmp_path / "rows.csv", tmp_path / "pred.csv"
    src.write_text("id,a,b,c\nx1,1,2,3\nx2,0,0,0\n")
    assert main(["predict", "--local", str(abc_run), "--file", str(src), "--out", str(out), "--id", "id"]) == 0
    assert [r[0] for r in _read(out)] == ["id", "x1", "x2"]
    assert "2 rows from" in capsys.readouterr().err
    src.write_text("id,a,b,c\nx1,1,2,3\nx2,0,zero,0\n")
    out.unlink()
    assert main(["predict", "--local", str(abc_run), "--file", str(src), "--out", str(out)]) == 2
    assert not out.exists()
    assert "column(s) ['id'] are not features" in capsys.readouterr().err
    assert main(["predict", "--local", str(abc_run), "--file", str(src), "--out", str(out), "--id", "id"]) == 2
    assert f"{src}, line 3: feature 'b': \"zero\" is not a number" in capsys.readouterr().err
    assert main(["predict", "--local", str(abc_run), "1,2,3", "--out", str(out)]) == 2
    assert "--out and --id go with --file" in capsys.readouterr().err
    assert main(["predict", "--local", str(abc_run), "--file", str(src), "--chunk-rows", "0"]) == 2
    assert "chunk_rows: 0 must be an integer ≥ 1" in capsys.readouterr().err


def test_out_naming_the_input_file_by_any_spelling_is_refused_and_the_input_kept(abc_run, tmp_path, capsys, monkeypatch):
    src = tmp_path / "rows.csv"
    text = "a,b,c\n1,2,3\n0,0,0\n"
    src.write_text(text)
    (tmp_path / "link.csv").symlink_to(src)
    monkeypatch.chdir(tmp_path)
    for out in (str(src), "./rows.csv", "link.csv", f"{tmp_path}/../{tmp_path.name}/rows.csv"):
        assert main(["predict", "--local", str(abc_run), "--file", "rows.csv", "--out", out]) == 2, out
        err = capsys.readouterr().err
        assert "is the input file" in err and err.count("\n") == 1, err
        assert src.read_text() == text and (tmp_path / "link.csv").is_symlink()


def test_the_temporary_output_never_follows_a_planted_symlink(model, tmp_path):
    """The temporary file beside --out is created exclusively under an unpredictable name: a symlink planted where an
    attacker could guess it (the name the output used to take, `.NAME.PID.partial`) leads nowhere."""
    import os

    src, out, victim = tmp_path / "rows.csv", tmp_path / "pred.csv", tmp_path / "victim.txt"
    src.write_text("a,b,c\n1,2,3\n")
    victim.write_text("keep me\n")
    planted = tmp_path / f".pred.csv.{os.getpid()}.partial"
    planted.symlink_to(victim)
    files.predict_file(src, out, model)
    assert victim.read_text() == "keep me\n" and planted.is_symlink()
    assert _read(out)[0] == ["prediction"] and len(_read(out)) == 2  # not the target `y`: see prediction_column
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([planted.name, "pred.csv", "rows.csv", "victim.txt"])
