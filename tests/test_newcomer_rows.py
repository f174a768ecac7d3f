"""Issue 25, "the newcomer's second hour", in process: positional CLI rows with text and empty cells, the `warnings`
of an unseen category, and the predictions file's `prediction` column (through a real server:
tests/integration/test_newcomer_serving.py)."""

from __future__ import annotations

import csv

import jsonschema
import pytest

from aiaas_torch.cli import main
from aiaas_torch.data import load_csv
from aiaas_torch.export import export_run
from aiaas_torch.files import predict_file, prediction_column
from aiaas_torch.openapi import describe_target
from aiaas_torch.quantize import QuantConfig
from aiaas_torch.runs import load_run
from aiaas_torch.train import TrainConfig, train

ISLANDS = ["Biscoe", "Dream", "New York"]  # one with a space and a comma-free quote: the CLI's CSV quoting


def island_csv(path):
    """Write a small table (island text, bill with blanks, mass → kind) to path; returns path."""
    lines = ["island,bill,mass,kind"]
    for i in range(60):
        k = i % 3
        bill = "" if i % 7 == 3 else f"{35 + 5 * k + (i % 4) * 0.5}"
        lines.append(f'"{ISLANDS[k]}",{bill},{3000 + 400 * k + (i % 5) * 10},{"abc"[k]}')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def island_run(tmp_path_factory):
    """A logistic model with one text column and imputation (every feature takes null), float program only."""
    root = tmp_path_factory.mktemp("isl")
    ds = load_csv(island_csv(root / "isl.csv"), "kind", impute="median")
    result = train(ds, TrainConfig(model="logistic", epochs=60, lr=0.1, val_fraction=0.0, progress=False))
    return export_run(result, root / "run", QuantConfig("none"), compile=False).run_dir


def test_positional_rows_take_text_and_empty_cells_with_csv_quoting(island_run, capsys):
    # before: exit 2, "row 'Dream,41.0,': expected comma-separated numbers, e.g. 1.5,2,3"
    assert main(["predict", "--local", str(island_run), "Dream,41.0,", '"New York",45,3800', " Biscoe, 35, 3000"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out] == ["b", "c", "a"]
    # the same rows as JSON: a text cell is a string, an empty one null, "3800" the number 3800
    model = load_run(island_run)
    want = model.predict({"instances": [["Dream", 41.0, None], ["New York", 45, 3800], ["Biscoe", 35, 3000]]})["predictions"]
    assert want == ["b", "c", "a"]


def test_a_text_cell_for_a_number_is_the_contracts_400_naming_the_feature(island_run, capsys):
    assert main(["predict", "--local", str(island_run), "Dream,heavy,3000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "aiaas predict: error: instances[0] feature 'bill': \"heavy\" is not a number"
    assert main(["predict", "--local", str(island_run), "Dream,1,nan"]) == 2
    assert "row 'Dream,1,nan': cell 'nan': values must be finite numbers" in capsys.readouterr().err
    assert main(["predict", "--local", str(island_run), '"Dream,1,3']) == 2  # an unclosed quote
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "write a row as CSV cells" in err


def test_an_unseen_category_is_marked_in_the_answer_and_only_then(island_run, capsys):
    model = load_run(island_run)
    known = model.predict({"instances": [["Dream", 41, 3400]]})
    assert "warnings" not in known  # the common answer is unchanged
    # before: {"predictions": ["b", "c"], "probabilities": [...], ...} with no sign that 'Atlantis' was never seen
    got = model.predict({"instances": [["Dream", 41, 3400], ["Atlantis", 41, 3400]]})
    assert got["warnings"] == [[], ["feature 'island': \"Atlantis\" was not seen in training (all-zero encoding)"]]
    assert got["predictions"][0] == known["predictions"][0]
    named = model.predict([{"island": "Atlantis", "bill": 41, "mass": 3400}, {"island": "Dream", "bill": None, "mass": 3400}])
    assert named["warnings"] == [got["warnings"][1], []]
    doc = describe_target(str(island_run))  # the document names the optional field, and the answer fits it
    assert "warnings" in doc["components"]["schemas"]["Prediction"]["properties"]
    jsonschema.Draft202012Validator({"$ref": "#/components/schemas/Prediction", "components": doc["components"]}).validate(got)
    assert main(["predict", "--local", str(island_run), "Atlantis,41,3400"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1  # stdout: one prediction per row; the warning goes to stderr
    assert captured.err == "aiaas predict: warning: row 1: feature 'island': \"Atlantis\" was not seen in training (all-zero encoding)\n"


def test_the_predictions_file_calls_its_column_prediction_with_the_probabilities_beside(island_run, tmp_path):
    src = tmp_path / "rows.csv"
    src.write_text('island,bill,mass\nDream,41,3400\n"New York",,3800\n')
    out = tmp_path / "pred.csv"
    predict_file(src, out, str(island_run))
    rows = list(csv.reader(out.open()))
    # before: the header was ["kind", "p_a", "p_b", "p_c"]: the target's name, read as the truth
    assert rows[0] == ["prediction", "p_a", "p_b", "p_c"] and [r[0] for r in rows[1:]] == ["b", "c"]


def test_the_prediction_column_is_target_pred_when_an_input_column_is_called_prediction():
    card = {"input": {"features": [{"name": "prediction"}, {"name": "x"}]}, "output": {"target": "price"}}
    assert prediction_column(card) == "price_pred"
    card["input"]["features"][0]["name"] = "forecast"
    assert prediction_column(card) == "prediction" and prediction_column(card, id_column="prediction") == "price_pred"
