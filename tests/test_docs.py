"""The promises table names real tests: every `file::test` in docs/promises.md exists, so the table cannot rot; the
Makefile's install says what it does; the benchmark scripts call only names the library has."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import types
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


def _library_names_missing(path: Path) -> list[str]:
    """Return the names a script imports from aiaas_torch, or reads off an aiaas_torch module it imported
    (`integrity.cpu_flags`), that the library does not have."""
    tree = ast.parse(path.read_text())
    modules, missing = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "aiaas_torch":
            base = importlib.import_module(node.module)
            for a in node.names:
                value = getattr(base, a.name, None)
                if value is None:
                    try:
                        value = importlib.import_module(f"{node.module}.{a.name}")
                    except ImportError:
                        missing.append(f"{path.name}: {node.module}.{a.name}")
                        continue
                if isinstance(value, types.ModuleType):
                    modules[a.asname or a.name] = value
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            if not hasattr(modules[node.value.id], node.attr):
                missing.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return missing


def test_benchmark_scripts_use_only_names_the_library_has():
    # the tests never run the benchmarks: when the CPU facts moved to handlers/integrity.py, three scripts kept calling
    # programs.cpu_model_name() and programs.isa_class(), and failed only when someone ran them
    scripts = sorted((Path(__file__).parents[1] / "benchmarks").glob("*.py"))
    assert len(scripts) > 5
    assert [m for p in scripts for m in _library_names_missing(p)] == []


def test_the_library_name_check_sees_a_missing_attribute(tmp_path):
    script = tmp_path / "b.py"
    script.write_text("from aiaas_torch.handlers import integrity, programs\nprograms.isa_class(integrity.cpu_flags())\n")
    assert _library_names_missing(script) == ["b.py:2: programs.isa_class"]


def test_the_first_install_says_what_it_does_before_the_long_pip_step(tmp_path):
    r = subprocess.run(["make", "-n", "install", f"VENV={tmp_path}/venv"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    pip = next(i for i, ln in enumerate(lines) if "pip install" in ln)
    assert any(ln.lstrip().startswith("echo") and "minutes" in ln for ln in lines[:pip]), lines
    assert "--progress-bar on" in lines[pip]
