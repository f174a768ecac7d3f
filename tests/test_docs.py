"""The promises table names real tests: every `file::test` in docs/promises.md exists, so the table cannot rot."""

from __future__ import annotations

import re
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
