"""Issue 25, "the newcomer's second hour": real public tables and the message each gave. Rows without a target, id
columns, ';'-separated and cp1252 files, the --impute hint (the leaderboard's rungs: test_select.py; `make demo`'s
first install: test_docs.py)."""

from __future__ import annotations

import json

import pytest

from aiaas_torch import data
from aiaas_torch.cli import main

FAST = ["--epochs", "20", "--no-compile", "--quantize", "none", "--no-progress"]


def _write(tmp_path, text, name: str = "d.csv") -> Path:
    p = tmp_path / name
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


def _lines(n: int) -> list[tuple[int, int, float]]:
    """n rows (x, z, y) with y = 2x - z + 1: a learnable table."""
    return [(i % 9, (i * 5) % 7, 2 * (i % 9) - (i * 5) % 7 + 1.0) for i in range(n)]


# --- 1. rows without a target ------------------------------------------------------------------------------


def test_an_empty_target_names_drop_missing_target(tmp_path):
    p = _write(tmp_path, "x,y\n1,2\n2,\n3,5\n4,7\n")
    with pytest.raises(data.InputError, match=r"line 3, column 'y': empty target cell.*--drop-missing-target"):
        data.load_csv(p, "y", impute="median")  # --impute fills features, never the target
    p = _write(tmp_path, "x,y\n1,2\n2,NA\n3,5\n4,7\n5,8\n", "na.csv")
    with pytest.raises(data.InputError, match=r"line 3, column 'y': missing target 'NA'.*--drop-missing-target"):
        data.load_csv(p, "y")


def test_drop_missing_target_leaves_the_rows_out_and_counts_them(tmp_path, capsys):
    rows = _lines(40)
    text = "x,z,y\n" + "".join(f"{x},{z},{'' if i in (3, 17) else ('NA' if i == 30 else y)}\n" for i, (x, z, y) in enumerate(rows))
    p = _write(tmp_path, text)
    ds = data.load_csv(p, "y", drop_missing_target=True)
    assert len(ds) == 37 and ds.dropped_rows == [5, 19, 32]  # the file's lines: the header is line 1
    assert main(["train", str(p), "--target", "y", "--out", str(tmp_path / "run"), "--drop-missing-target", *FAST]) == 0
    out = capsys.readouterr().out
    assert "dropped 3 row(s) without a target 'y' (--drop-missing-target): line(s) 5, 19, 32" in out
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["data"]["rows"] == 37
    assert card["data"]["dropped_missing_target"] == {"count": 3, "lines": [5, 19, 32]}


# --- 2. id columns -----------------------------------------------------------------------------------------


def _cars(n: int) -> str:
    return "rownames,model,x,z,y\n" + "".join(f"{i + 1},car {i},{x},{z},{y}\n" for i, (x, z, y) in enumerate(_lines(n)))


def test_id_columns_are_excluded_with_a_warning_naming_keep_and_id(tmp_path):
    p = _write(tmp_path, _cars(30))
    with pytest.warns(UserWarning) as caught:
        ds = data.load_csv(p, "y")
    assert ds.schema.feature_names == ["x", "z"]
    said = [str(w.message) for w in caught]
    assert any("column 'rownames': looks like a row id (the integers 1..30 in row order" in m and "--keep rownames" in m
               and "--id rownames" in m for m in said), said  # fmt: skip
    assert any("column 'model': looks like a row id (text unique to every one of the 30 rows)" in m for m in said), said
    assert set(ds.excluded) == {"rownames", "model"}
    assert data.load_csv(p, "y", keep=["rownames"], ids=["model"]).schema.feature_names == ["rownames", "x", "z"]
    # rows left out for a missing target do not hide the row numbers: the sequence is the file's
    gaps = _write(tmp_path, "\n".join(ln if i != 5 else ln.rsplit(",", 1)[0] + "," for i, ln in enumerate(_cars(30).splitlines())) + "\n", "gaps.csv")
    assert set(data.load_csv(gaps, "y", drop_missing_target=True, ids="model").excluded) == {"rownames", "model"}


def test_declared_ids_go_without_a_warning_and_small_tables_are_not_judged(tmp_path, recwarn):
    ds = data.load_csv(_write(tmp_path, _cars(30)), "y", ids=["rownames", "model"])
    assert ds.schema.feature_names == ["x", "z"] and not [w for w in recwarn if "row id" in str(w.message)]
    assert data.load_csv(_write(tmp_path, _cars(12), "small.csv"), "y", keep="model").schema.feature_names == ["rownames", "model", "x", "z"]
    # 1..N under a plain name is a measurement (a day, a dose), not an id: it stays a feature
    p = _write(tmp_path, "day,y\n" + "".join(f"{i + 1},{2 * i + 3}\n" for i in range(30)), "days.csv")
    assert data.load_csv(p, "y").schema.feature_names == ["day"]
    with pytest.raises(data.InputError, match=r"keep: 'nope' is not a feature column"):
        data.load_csv(p, "y", keep=["nope"])


def test_the_card_records_excluded_columns_and_does_not_expect_them(tmp_path, capsys):
    p = _write(tmp_path, _cars(40))
    assert main(["train", str(p), "--target", "y", "--out", str(tmp_path / "run"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "aiaas: warning: " in err and "column 'rownames': looks like a row id" in err
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert [f["name"] for f in card["input"]["features"]] == ["x", "z"]  # what a request sends: no id column
    assert set(card["data"]["excluded_columns"]) == {"rownames", "model"}
    assert any("'rownames': looks like a row id" in w for w in card["data"]["warnings"])


# --- 3. separators, decimal commas, encodings --------------------------------------------------------------


def _semicolons(n: int = 30) -> str:
    return "species;bill;mass\n" + "".join(f"{'ab'[i % 2]};{30 + i % 9},{i % 10};{3000 + 40 * (i % 9)}\n" for i in range(n))


def test_a_semicolon_file_is_sniffed_and_a_decimal_comma_is_named(tmp_path):
    p = _write(tmp_path, _semicolons())
    with pytest.raises(data.InputError, match=r"column 'bill': values such as '30,0' look like numbers with a decimal comma: use --decimal ','"):
        data.load_csv(p, "species")
    ds = data.load_csv(p, "species", decimal=",")
    assert ds.schema.feature_names == ["bill", "mass"] and ds.X[1, 0] == pytest.approx(31.1)
    assert ds.reading == {"sep": ";", "decimal": ",", "encoding": "utf-8"}
    with pytest.raises(data.InputError, match=r"line 1: the header is one column 'species;bill;mass' with ','; this looks ';'-separated: use --sep ';'"):
        data.load_csv(p, "species", sep=",")
    tabs = _write(tmp_path, "a\tb\ty\n" + "".join(f"{i}\t{i % 3}\t{i % 2}\n" for i in range(10)), "t.tsv")
    assert data.load_csv(tabs, "y").schema.feature_names == ["a", "b"]


def test_a_cp1252_file_names_the_line_and_encoding(tmp_path, capsys):
    text = "city,x,y\n" + "".join(f"{'Zürich' if i % 2 else 'Genève'},{i},{2 * i}\n" for i in range(6))
    p = _write(tmp_path, text.encode("cp1252"))
    with pytest.raises(data.InputError, match=r"line 2: not UTF-8 text \(byte 12, b'\\xe8'\).*--encoding cp1252"):
        data.load_csv(p, "y")
    assert data.load_csv(p, "y", encoding="cp1252").schema.features[0].categories == ["Genève", "Zürich"]
    assert main(["train", str(p), "--target", "y", "--out", str(tmp_path / "run"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 2: not UTF-8 text" in err[0] and "--encoding cp1252" in err[0]
    assert not (tmp_path / "run").exists()
    assert main(["train", str(p), "--target", "y", "--out", str(tmp_path / "run"), "--encoding", "cp1252", *FAST]) == 0
    with pytest.raises(data.InputError, match=r"encoding: 'klingon' is not a text encoding"):
        data.load_csv(p, "y", encoding="klingon")


# --- 4. the --impute hint ----------------------------------------------------------------------------------


def test_an_empty_cell_names_impute(tmp_path, capsys):
    p = _write(tmp_path, "age,bmi,y\n" + "".join(f"{i},{'' if i == 5 else 20 + i},{i % 3}\n" for i in range(10)))
    assert main(["train", str(p), "--target", "y", "--out", str(tmp_path / "run"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert "line 7, column 'bmi': empty cell, expected a number (use --impute median, or --impute bmi=median" in err
    assert "\n" not in err


def test_the_training_file_with_its_id_columns_predicts_locally(tmp_path, capsys):
    p = _write(tmp_path, _cars(40))
    assert main(["train", str(p), "--target", "y", "--out", str(tmp_path / "run"), *FAST]) == 0
    capsys.readouterr()
    out = tmp_path / "pred.csv"
    assert main(["predict", "--local", str(tmp_path / "run"), "--file", str(p), "--id", "model", "--out", str(out)]) == 0, capsys.readouterr().err
    lines = out.read_text().splitlines()
    assert len(lines) == 41 and lines[0].split(",")[0] == "model" and lines[1].startswith("car 0,")
