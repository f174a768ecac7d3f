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
