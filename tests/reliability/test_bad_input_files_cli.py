"""Promise 2: malformed files and arguments end in exit code 2 (CLI, as a real subprocess) or ValueError/TypeError
(Python API) with a message naming the problem, and nothing is written: the working directory's listing,
hashes included, is the same before and after.

tests/test_cli.py already covers: missing file, empty file, missing target column, non-numeric cell, NaN cell,
ragged row, < 2 rows, duplicate columns, bad --lr/--epochs/--model/--hidden/--val-fraction/--quantize, bad
predict --local bodies, bad package name/version/workers, a run directory with an edited model file. This corpus
adds the rest. Each subprocess pays ~2 CPU-seconds for importing torch, so one case per command family runs as a
real `python -m aiaas_torch.cli` subprocess (a few at a time, in one module fixture) and the others go through
`aiaas_torch.cli.main`, which is exactly what that module runs (`sys.exit(main())`), with the same assertions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from aiaas_torch import card as card_mod
from aiaas_torch import data, export
from aiaas_torch.archive import ServingConfig, package, verify_archive
from aiaas_torch.cli import main
from aiaas_torch.train import TrainConfig, train

from rel_helpers import tree_listing

pytestmark = pytest.mark.slow


@dataclass
class CliCase:
    """A workspace to lay out, the arguments to run in it ({ws} is the workspace), and the message fragment."""

    id: str
    setup: Callable[[Path, Path], None]  # (workspace, good run directory) → None
    args: list[str]
    needle: str
    env: dict | None = None
    subprocess: bool = False  # True: run as `python -m aiaas_torch.cli` (a real exit code); else through cli.main in-process


def _csv(text: str | bytes, name: str = "d.csv"):
    def setup(ws: Path, run: Path) -> None:
        (ws / name).write_bytes(text.encode() if isinstance(text, str) else text)
    return setup


def _run(edit: Callable[[Path], None] | None = None):
    """Copy the good run directory to ws/run, then apply edit to it."""
    def setup(ws: Path, run: Path) -> None:
        shutil.copytree(run, ws / "run")
        if edit is not None:
            edit(ws / "run")
    return setup


def _card(change: Callable[[dict], None]):
    def edit(run: Path) -> None:
        card = json.loads((run / "model.json").read_text())
        change(card)
        (run / "model.json").write_text(json.dumps(card))
    return edit


def _both(*setups):
    def setup(ws: Path, run: Path) -> None:
        for s in setups:
            s(ws, run)
    return setup


GOOD = "a,b,y\n" + "".join(f"{i},{i % 7},{2 * i + 1}\n" for i in range(1, 41))
TRAIN = ["train", "{ws}/d.csv", "--target", "y", "--out", "{ws}/out", "--epochs", "3", "--no-compile"]
PACKAGE = ["package", "{ws}/run", "--name", "lin", "--model-store", "{ws}/store"]


def _train(*extra: str) -> list[str]:
    return [*TRAIN, *extra]


CLI_CASES = [
    CliCase("train-inf-cell", _csv("a,y\n1,2\ninf,4\n3,5\n"), _train(), "line 3, column 'a': 'inf' is not a finite number", subprocess=True),
    CliCase("train-minus-inf-target", _csv("a,y\n1,2\n2,-inf\n3,4\n"), _train(), "line 3, column 'y': '-inf' is not a finite number"),
    CliCase("train-empty-cell", _csv("a,y\n1,2\n,4\n3,5\n"), _train(), "line 3, column 'a': empty cell"),
    CliCase("train-empty-target-cell", _csv("a,y\n1,2\n2,\n3,5\n"), _train(), "line 3, column 'y': empty target cell"),
    CliCase("train-header-only", _csv("a,y\n"), _train(), "0 data row(s)"),
    CliCase("train-only-the-target-column", _csv("y\n1\n2\n3\n"), _train(), "no feature columns"),
    CliCase("train-not-utf8", _csv(b"a,y\n1,2\n\xff,3\n"), _train(), "not UTF-8"),
    CliCase("train-data-is-a-directory", lambda ws, run: (ws / "d.csv").mkdir(), _train(), "not a regular file"),
    CliCase("train-empty-column-name", _csv("a,,y\n1,2,3\n4,5,6\n"), _train(), "column 2: empty column name"),
    CliCase("train-all-constant-features", _csv("a,b,y\n7,1,1\n7,1,2\n7,1,3\n7,1,4\n"), _train(), "every feature column is constant", subprocess=True),
    CliCase("train-one-class-only", _csv("a,y\n1,0\n2,0\n3,0\n"), _train("--task", "classification"), "one class only"),
    CliCase("train-regression-on-labels", _csv("a,y\n1,cat\n2,dog\n3,cat\n"), _train("--task", "regression"), "line 2, column 'y': non-numeric target 'cat'"),
    CliCase("train-classes-not-integers", _csv("a,y\n1,0.5\n2,1.5\n3,0.5\n"), _train("--task", "classification"), "integer or string labels"),
    CliCase("train-out-is-a-file", _both(_csv(GOOD), lambda ws, run: (ws / "out").write_text("x")), _train(), "exists and is not a directory"),
    CliCase("train-out-is-a-foreign-dir", _both(_csv(GOOD), lambda ws, run: ((ws / "out").mkdir(), (ws / "out" / "notes.txt").write_text("mine"))),
            _train(), "not an aiaas run directory", subprocess=True),
    CliCase("train-resume-without-checkpoint", _csv(GOOD), _train("--resume"), "resume: no checkpoint", subprocess=True),
    CliCase("train-batch-size-0", _csv(GOOD), _train("--batch-size", "0"), "batch_size: 0"),
    CliCase("train-negative-seed", _csv(GOOD), _train("--seed", "-1"), "seed: -1"),
    CliCase("train-negative-checkpoint-every", _csv(GOOD), _train("--checkpoint-every", "-1"), "checkpoint_every: -1"),
    CliCase("train-patience-0", _csv(GOOD), _train("--patience", "0"), "patience: 0"),
    CliCase("train-gate-nan", _csv(GOOD), _train("--gate", "nan"), "--gate"),
    CliCase("package-run-dir-missing", lambda ws, run: None, PACKAGE, "no model.json"),
    CliCase("package-model-file-missing", _run(lambda r: (r / "model_float.pt2").unlink()), PACKAGE, "model_float.pt2: missing"),
    CliCase("package-card-wrong-field-type", _run(_card(lambda c: c.update(input=["a", "b", "c"]))), PACKAGE, "field 'input' must be dict, got list", subprocess=True),
    CliCase("package-card-feature-min-is-text", _run(_card(lambda c: c["input"]["features"][0].update(min="low"))), PACKAGE,
            "input.features['a'].min' must be a number"),
    CliCase("package-card-not-json", _run(lambda r: (r / "model.json").write_text("{not json")), PACKAGE, "not valid JSON"),
    CliCase("package-card-other-schema-version", _run(_card(lambda c: c.update(schema_version=99))), PACKAGE, "schema_version 99"),
    CliCase("package-sign-without-key", _run(), [*PACKAGE, "--sign"], "--sign needs the signing key in $AIAAS_SIGNING_KEY",
            env={"AIAAS_SIGNING_KEY": ""}),
    CliCase("package-max-rows-0", _run(), [*PACKAGE, "--max-rows", "0"], "max_rows: 0"),
    CliCase("quantize-checkpoint-missing", _run(lambda r: (r / "checkpoint.pt").unlink()), ["quantize", "{ws}/run", "--no-compile"],
            "checkpoint.pt: missing"),
    CliCase("quantize-checkpoint-edited", _run(lambda r: open(r / "checkpoint.pt", "ab").write(b"\0")), ["quantize", "{ws}/run", "--no-compile"],
            "checkpoint.pt: SHA-256 does not match", subprocess=True),
    CliCase("predict-local-card-hash-edited", _run(_card(lambda c: c["files"]["model_float.pt2"].update(sha256="0" * 64))),
            ["predict", "--local", "{ws}/run", "1,2,3"], "model_float.pt2: SHA-256 does not match", subprocess=True),
    CliCase("predict-body-file-missing", _run(), ["predict", "--local", "{ws}/run", "--file", "{ws}/body.json"], "file not found"),
    CliCase("serve-models-not-name-equals-file", lambda ws, run: (ws / "store").mkdir(),
            ["serve", "start", "--home", "{ws}/home", "--model-store", "{ws}/store", "--models", "lin.mar", "--free-ports"], "expected NAME=FILE.mar"),
    CliCase("serve-model-store-missing", lambda ws, run: None,
            ["serve", "start", "--home", "{ws}/home", "--model-store", "{ws}/store", "--free-ports"], "model store not found"),
    CliCase("serve-archive-not-in-store", lambda ws, run: (ws / "store").mkdir(),
            ["serve", "start", "--home", "{ws}/home", "--model-store", "{ws}/store", "--models", "lin=lin-9.mar", "--free-ports"],
            "'lin-9.mar' not found in the model store", subprocess=True),
]


@pytest.fixture(scope="module")
def cli_results(runs, tmp_path_factory) -> dict:
    """Run the subprocess cases as `python -m aiaas_torch.cli ...`, each in its own workspace; {id: (code, stderr, before, after)}."""
    root = tmp_path_factory.mktemp("cli_cases")

    def one(case: CliCase):
        ws = root / case.id
        ws.mkdir()
        case.setup(ws, runs.lin)
        before = tree_listing(ws)
        env = {**os.environ, **case.env} if case.env is not None else None
        args = [a.replace("{ws}", str(ws)) for a in case.args]
        r = subprocess.run([sys.executable, "-m", "aiaas_torch.cli", *args], capture_output=True, text=True, timeout=180, env=env)
        return case.id, (r.returncode, r.stderr, before, tree_listing(ws))

    with ThreadPoolExecutor(3) as pool:
        return dict(pool.map(one, [c for c in CLI_CASES if c.subprocess]))


def _in_process(case: CliCase, runs, tmp_path, capsys, monkeypatch):
    """Run a case through cli.main in this process; returns (code, stderr, before, after)."""
    ws = tmp_path / case.id
    ws.mkdir()
    case.setup(ws, runs.lin)
    before = tree_listing(ws)
    for k, v in (case.env or {}).items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    try:
        code = main([a.replace("{ws}", str(ws)) for a in case.args])
    except SystemExit as e:  # argparse errors
        code = e.code
    return code, capsys.readouterr().err, before, tree_listing(ws)


def test_corpus_is_big_enough():
    assert len(CLI_CASES) + len(PY_CASES) >= 20 and len({c.id for c in CLI_CASES}) == len(CLI_CASES)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_refuses_with_exit_2_one_line_and_writes_nothing(request, runs, tmp_path, capsys, monkeypatch, case: CliCase):
    if case.subprocess:
        code, err, before, after = request.getfixturevalue("cli_results")[case.id]
    else:
        code, err, before, after = _in_process(case, runs, tmp_path, capsys, monkeypatch)
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert case.needle in lines[0], lines[0]
    assert after == before, sorted(set(after) ^ set(before))


# --------------------------------------------------------------------------------------------- Python API


def _tiny_dataset():
    X = np.arange(1, 9, dtype=float).reshape(-1, 2)
    return data.from_arrays(X, X.sum(1), ["p", "q"])


def _truncated_mar(ws: Path, run: Path) -> Path:
    mar = package(run, "lin", "1.0", ws / "store").path
    mar.write_bytes(mar.read_bytes()[:200])
    return mar


def _mar_without(member: str):
    def make(ws: Path, run: Path) -> Path:
        mar = package(run, "lin", "1.0", ws / "store").path
        with zipfile.ZipFile(mar) as zin:
            items = [(i, zin.read(i.filename)) for i in zin.infolist() if i.filename != member]
        with zipfile.ZipFile(mar, "w") as zout:
            for i, d in items:
                zout.writestr(i, d)
        return mar
    return make


PY_CASES = [
    ("from-arrays-X-is-text", None, lambda ws, run, _: data.from_arrays("1,2,3", [1, 2, 3]), TypeError, "X: expected a 2-D array"),
    ("from-arrays-ragged", None, lambda ws, run, _: data.from_arrays([[1, 2], [3]], [1, 2]), ValueError, "rectangular"),
    ("from-arrays-nan", None, lambda ws, run, _: data.from_arrays([[1.0], [float("nan")], [2.0]], [1, 2, 3]), ValueError, "row 1, column 'x0'"),
    ("from-arrays-inf-target", None, lambda ws, run, _: data.from_arrays([[1.0], [2.0], [3.0]], [1, float("inf"), 3]), ValueError, "y, row 1"),
    ("from-arrays-y-length", None, lambda ws, run, _: data.from_arrays([[1.0], [2.0]], [1, 2, 3]), ValueError, "3 values for 2 rows"),
    ("from-arrays-duplicate-names", None, lambda ws, run, _: data.from_arrays([[1, 2], [3, 4]], [1, 2], ["a", "a"]), ValueError, "duplicate names"),
    ("from-arrays-3d", None, lambda ws, run, _: data.from_arrays(np.zeros((2, 2, 2)), [1, 2]), ValueError, "expected 2 dimensions"),
    ("load-csv-no-target-name", _csv(GOOD), lambda ws, run, _: data.load_csv(ws / "d.csv", ""), ValueError, "target"),
    ("train-not-a-dataset", None, lambda ws, run, _: train([[1, 2]], TrainConfig(epochs=1)), TypeError, "dataset"),
    ("train-logistic-on-regression", None, lambda ws, run, _: train(_tiny_dataset(), TrainConfig(model="logistic", epochs=1)), ValueError,
     "needs a classification target"),
    ("package-bad-name", None, lambda ws, run, _: package(run, "../evil", "1.0", ws / "store"), ValueError, "name"),
    ("package-workers-text", None, lambda ws, run, _: package(run, "lin", "1.0", ws / "store", serving=ServingConfig(workers="2")),
     ValueError, "workers"),
    ("package-handler-missing", None, lambda ws, run, _: package(run, "lin", "1.0", ws / "store", handler=ws / "nope.py"), ValueError, "handler"),
    ("package-handler-name-clash", lambda ws, run: (ws / "aiaas_contract.py").write_text("x = 1\n"),
     lambda ws, run, _: package(run, "lin", "1.0", ws / "store", handler=ws / "aiaas_contract.py"), ValueError, "clash"),
    ("profile-unknown", None, lambda ws, run, _: ServingConfig.profile("fastest"), ValueError, "profile"),
    ("verify-truncated-archive", _truncated_mar, lambda ws, run, mar: verify_archive(mar), ValueError, "not a readable .mar"),
    ("verify-archive-without-model-file", _mar_without("model_float.pt2"), lambda ws, run, mar: verify_archive(mar), ValueError,
     "model_float.pt2: listed in the card but missing from the archive"),
    ("verify-archive-without-handler", _mar_without("tabular_handler.py"), lambda ws, run, mar: verify_archive(mar), ValueError,
     "tabular_handler.py: listed in the card but missing from the archive"),
    ("load-run-empty-features", None, lambda ws, run, _: card_mod.check_card({**card_mod.read_card(run), "input": {"features": []}}, "card"),
     ValueError, "input.features"),
]


@pytest.mark.parametrize("case_id, prepare, call, error, needle", PY_CASES, ids=[c[0] for c in PY_CASES])
def test_python_api_refuses_with_a_typed_error_and_writes_nothing(runs, tmp_path, case_id, prepare, call, error, needle):
    ws = tmp_path / "ws"
    ws.mkdir()
    made = prepare(ws, runs.lin) if prepare is not None else None
    before, run_before = tree_listing(ws), tree_listing(runs.lin)
    with pytest.raises(error) as e:
        call(ws, runs.lin, made)
    assert needle in str(e.value), str(e.value)
    assert tree_listing(ws) == before and tree_listing(runs.lin) == run_before
