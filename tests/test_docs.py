"""The promises table names real tests: every `file::test` in docs/promises.md exists, so the table cannot rot; the
Makefile's install says what it does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_test_named_in_the_promises_table_exists():
    text = (REPO / "docs" / "promises.md").read_text()
    named = 0
    for row in (line for line in text.splitlines() if line.startswith("| ") and "::" in line):
        current = None
        for file, name in re.findall(r"`(?:(tests/[\w/]+\.py|[\w]+\.py))?::(\w+)`", row):
            if file:
                current = next(REPO.glob(f"tests/**/{Path(file).name}")) if not file.startswith("tests/") else REPO / file
            assert current is not None, f"{name}: no file named before it in the row"
            assert re.search(rf"^def {name}\(", current.read_text(), re.M), f"{current.relative_to(REPO)}::{name} does not exist"
            named += 1
    assert named >= 40


def test_no_benchmark_script_shadows_a_standard_library_module():
    # `python benchmarks/X.py` puts benchmarks/ first on sys.path: a benchmarks/select.py broke every other script there
    # (subprocess imports select)
    names = {p.stem for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py")}
    assert not names & set(sys.stdlib_module_names), names & set(sys.stdlib_module_names)


def test_the_first_install_says_what_it_does_before_the_long_pip_step(tmp_path):
    r = subprocess.run(["make", "-n", "install", f"VENV={tmp_path}/venv"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    pip = next(i for i, ln in enumerate(lines) if "pip install" in ln)
    assert any(ln.lstrip().startswith("echo") and "minutes" in ln for ln in lines[:pip]), lines
    assert "--progress-bar on" in lines[pip]
