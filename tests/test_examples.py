"""The shipped examples run as the README shows them and learn something real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aiaas_torch.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_diabetes_regression(tmp_path, capsys):
    assert main(["train", str(EXAMPLES / "diabetes.csv"), "--target", "progression", "--out", str(tmp_path / "r"),
                 "--epochs", "1000", "--lr", "0.1", "--no-compile", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["data"]["rows"] == 442 and len(card["input"]["features"]) == 10
    assert card["metrics"]["validation"]["r2"] > 0.4  # the linear model explains about half the variance


def test_iris_classification(tmp_path, capsys):
    assert main(["train", str(EXAMPLES / "iris.csv"), "--target", "species", "--out", str(tmp_path / "r"),
                 "--epochs", "300", "--lr", "0.1", "--batch-size", "16", "--no-compile", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["output"]["classes"] == ["setosa", "versicolor", "virginica"]
    assert card["metrics"]["validation"]["accuracy"] >= 0.9


@pytest.mark.slow
def test_origin_example_script(tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLES / "origin.py"), str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    values = [float(v) for v in last.split("[", 1)[1].rstrip("]").split(",")]
    assert abs(values[0] - 12) < 0.05 and abs(values[1] - 14) < 0.05
    assert "in_features == 1" in out.stdout and out.stderr.strip() == ""  # no third-party noise on the terminal


def test_penguins_like_with_blanks_and_text_columns(tmp_path, capsys):
    """The README's walk-through: blanks imputed, text columns one-hot encoded, strings and nulls in the request."""
    run = tmp_path / "r"
    assert main(["train", str(EXAMPLES / "penguins_like.csv"), "--target", "species", "--impute", "median", "--out", str(run),
                 "--epochs", "300", "--lr", "0.1", "--no-compile", "--json"]) == 0  # fmt: skip
    card = json.loads(capsys.readouterr().out)
    kinds = {f["name"]: f["kind"] for f in card["input"]["features"]}
    assert kinds["island"] == kinds["sex"] == "categorical" and kinds["bill_length_mm"] == "numeric"
    assert card["metrics"]["validation"]["accuracy"] >= 0.9
    body = json.dumps({"instances": [
        {"island": "Dream", "bill_length_mm": 49.0, "bill_depth_mm": 18.5, "flipper_length_mm": 196, "body_mass_g": 3700, "sex": None},
        {"island": "Biscoe", "bill_length_mm": None, "bill_depth_mm": 15.0, "flipper_length_mm": 217, "body_mass_g": 5100, "sex": "male"}]})  # fmt: skip
    assert main(["predict", "--local", str(run), "--body", body, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"] == ["Chinstrap", "Gentoo"]


def test_the_readme_commands_train_the_examples_with_the_default_fit(tmp_path):
    """The README's first two `aiaas train` lines give no --lr or --epochs: the default fit (whitened, rate from the
    data, stop on convergence) must train both examples and answer the README's iris rows as it says."""
    from aiaas_torch.runs import load_run

    readme = (EXAMPLES.parent / "README.md").read_text()
    assert "aiaas train examples/diabetes.csv --target progression --out runs/diabetes\n" in readme
    assert "aiaas train examples/iris.csv --target species --out runs/iris\n" in readme
    assert main(["train", str(EXAMPLES / "diabetes.csv"), "--target", "progression", "--out", str(tmp_path / "d"),
                 "--no-compile", "--json"]) == 0  # fmt: skip
    assert main(["train", str(EXAMPLES / "iris.csv"), "--target", "species", "--out", str(tmp_path / "i"),
                 "--no-compile", "--json"]) == 0  # fmt: skip
    answer = load_run(tmp_path / "i").predict({"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})
    assert answer["predictions"] == ["setosa", "virginica"]
    d = json.loads((tmp_path / "d" / "model.json").read_text())
    assert d["metrics"]["validation"]["r2"] > 0.45, d["metrics"]  # least squares on this split: ≈ 0.52
