"""The project's structural rules, read from the source with `ast` (nothing is imported):

- no module imports another module's `_private` name (a package's own `_module`, e.g. aiaas_torch._quiet, is the
  package's: its modules may import it);
- the aiaas_torch import graph, module-level and function-level imports both, has no cycle, and the modules that
  make programs and write run directories import nothing above them;
- handlers/ (shipped into every .mar, run inside TorchServe workers) import nothing from aiaas_torch;
- every third-party import is a declared dependency (an optional extra only where imported lazily), pinned in
  constraints.txt;
- every module has a row in tests/README.md, the map from modules to their tests.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"aiaas_torch": ROOT / "aiaas_torch", "aiaas_torch.handlers": ROOT / "handlers"}  # pyproject's package-dir
HANDLERS = "aiaas_torch.handlers"

# (importing module, module it imports from) → why its `_names` stay: only files this change could not edit
PRIVATE_ALLOWED: dict = {}


def modules() -> dict[str, Path]:
    """Return {dotted module name: source file} for every module of aiaas_torch (handlers/ as aiaas_torch.handlers)."""
    out = {}
    for pkg, base in PACKAGES.items():
        for path in sorted(base.rglob("*.py")):
            parts = [pkg, *path.relative_to(base).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports(name: str) -> list[tuple[str, list[str], int, bool]]:
    """Return (module imported from, names imported, line, at module level) for every import in module `name`.

    A handler's bare `import integrity` (its fallback inside a TorchServe worker) is resolved to aiaas_torch.handlers.
    `from P import m` where P.m is a module counts as an import of P.m.
    """
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body} | {id(s) for n in tree.body if isinstance(n, (ast.Try, ast.If)) for s in ast.walk(n)}
    local = {m.rsplit(".", 1)[1] for m in MODULES if m.startswith(HANDLERS + ".")} if name.startswith(HANDLERS) else set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                src = f"{HANDLERS}.{a.name}" if a.name in local else a.name
                found.append((src, [], node.lineno, id(node) in top))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if _is_package(name) else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = f"{HANDLERS}.{node.module}" if node.module in local else node.module
            for a in node.names:
                sub = f"{src}.{a.name}"
                found.append((sub, [], node.lineno, id(node) in top) if sub in MODULES else (src, [a.name], node.lineno, id(node) in top))
    return found


def _private(n: str) -> bool:
    return n.startswith("_") and not n.startswith("__")


def private_uses() -> list[tuple[str, str, str, int]]:
    """Return (module, other module, private name, line) for each import or attribute use of another module's _name."""
    out = []
    for name in MODULES:
        bound = {}  # local name → our module it is bound to (import x.y as z; from . import m)
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        for src, names, line, _ in imports(name):
            if src == name:
                continue
            for n in names:
                if _private(n):
                    out.append((name, src, n, line))
            if not names and src in MODULES:
                leaf = src.rsplit(".", 1)[1]
                owner = src.rsplit(".", 1)[0]
                if _private(leaf) and not (name == owner or name.startswith(owner + ".")):
                    out.append((name, owner, leaf, line))  # another package's private module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = name.split(".") if _is_package(name) else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    if f"{src}.{a.name}" in MODULES:
                        bound[a.asname or a.name] = f"{src}.{a.name}"
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aiaas_torch"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODULES:
                        bound[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    full = f"{HANDLERS}.{a.name}" if name.startswith(HANDLERS + ".") and f"{HANDLERS}.{a.name}" in MODULES else a.name
                    if full in MODULES and (a.asname or full != a.name):
                        bound[a.asname or a.name] = full
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and _private(node.attr) and f"{bound[node.value.id]}.{node.attr}" not in MODULES):
                out.append((name, bound[node.value.id], node.attr, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    """Return {module: the aiaas_torch modules it imports} (module-level and function-level imports both)."""
    return {name: {src for src, _, _, _ in imports(name) if src in MODULES and src != name} for name in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """Return one cycle of the graph as a list of modules (first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (c := visit(n)):
            return c
    return None


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    """Return every module `start` imports, directly or not."""
    seen, todo = set(), [start]
    while todo:
        for m in edges.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


# ----------------------------------------------------------------------------------------------- private names


def test_no_module_imports_another_modules_private_name():
    uses = private_uses()
    bad = [f"{m} line {l}: {src}.{n}" for m, src, n, l in uses if (m, src) not in PRIVATE_ALLOWED]
    assert not bad, "another module's _private name used (give it a public name in the module that owns it):\n" + "\n".join(bad)
    stale = set(PRIVATE_ALLOWED) - {(m, src) for m, src, _, _ in uses}
    assert not stale, f"allow-list entries no longer needed: remove them: {sorted(stale)}"


def test_the_private_name_check_sees_imports_and_attribute_uses(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("def _hidden():\n    return 1\n")
    (tmp_path / "b.py").write_text("from .a import _hidden\n")
    (tmp_path / "c.py").write_text("def f():\n    from . import a\n    return a._hidden()\n")
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {f"pkg.{x}": tmp_path / f"{x}.py" for x in "abc"})
    assert sorted((m, n) for m, _, n, _ in private_uses()) == [("pkg.b", "_hidden"), ("pkg.c", "_hidden")]


# ------------------------------------------------------------------------------------------------- the graph


def test_the_aiaas_torch_import_graph_has_no_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_cycle_check_finds_a_function_level_cycle(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {"pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py"})
    assert find_cycle(graph()) == ["pkg.a", "pkg.b", "pkg.a"]


@pytest.mark.parametrize("module, never", [
    # making programs: nothing of the package (export, importer, optimize and select call it)
    ("aiaas_torch.making", {m for m in MODULES if m != "aiaas_torch.making"}),
    # writing a run directory: below everything that writes one
    ("aiaas_torch.rundir", {"aiaas_torch.export", "aiaas_torch.importer", "aiaas_torch.select", "aiaas_torch.optimize",
                            "aiaas_torch.train", "aiaas_torch.making"}),
    # choosing programs by measurement: below export and import
    ("aiaas_torch.optimize", {"aiaas_torch.export", "aiaas_torch.importer", "aiaas_torch.select", "aiaas_torch.rundir"}),
])
def test_the_core_imports_point_down(module, never):
    up = reachable(graph(), module) & never
    assert not up, f"{module} imports {sorted(up)}, which sit above it"


def test_handlers_import_nothing_from_aiaas_torch():
    bad = [f"{m} line {l}: {src}" for m in MODULES if m.startswith(HANDLERS)
           for src, _, l, _ in imports(m) if src.split(".")[0] == "aiaas_torch" and not src.startswith(HANDLERS)]
    assert not bad, "handlers/ run inside TorchServe workers without aiaas_torch:\n" + "\n".join(bad)


# the worker's dependency set, as handlers/__init__.py states it (issue 24, item 8): a literal here, not read from there
WORKER_SET = {"torch", "numpy", "orjson", "tokenizers", "safetensors", "jinja2"}


def test_handlers_import_only_the_worker_dependency_set():
    used = {d: sorted({m for m, _ in w if m.startswith(HANDLERS)}) for d, w in third_party_imports().items()}
    outside = {d: ms for d, ms in used.items() if ms and d not in WORKER_SET}
    assert used.get("torch"), "the scan sees the handlers' imports"
    assert not outside, f"handlers/ import outside the worker's set {sorted(WORKER_SET)}: {outside}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert WORKER_SET <= {_dist_name(r) for r in project["dependencies"]}, "the worker's set is a core dependency"
    doc = (ROOT / "handlers" / "__init__.py").read_text()
    assert all(f"``{d}``" in doc or d in ("torch", "numpy", "orjson") for d in WORKER_SET)


# ---------------------------------------------------------------------------------------------- dependencies

# import name → distribution name where they differ (the installed metadata answers the rest)
DISTRIBUTION = {"yaml": "pyyaml", "ts": "torchserve", "model_archiver": "torch-model-archiver"}


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def third_party_imports() -> dict[str, list[tuple[str, bool]]]:
    """Return {distribution: [(module, imported at module level outside a try)]} for every third-party import."""
    local = {m.rsplit(".", 1)[-1] for m in MODULES} | {"aiaas_torch"}
    known = importlib.metadata.packages_distributions()
    out: dict[str, list] = {}
    for name in MODULES:
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        guarded = {id(s) for n in ast.walk(tree) if isinstance(n, ast.Try) for s in ast.walk(n)}
        eager = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top in local or top == "__future__":
                    continue
                dist = DISTRIBUTION.get(top) or (known.get(top) or [top])[0]
                out.setdefault(dist.lower().replace("_", "-"), []).append((name, id(node) in eager and id(node) not in guarded))
    return out


def test_every_third_party_import_is_a_declared_dependency_pinned_in_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_dist_name(r) for r in project["dependencies"]}
    extras = {_dist_name(r) for k, reqs in project["optional-dependencies"].items() if k != "dev" for r in reqs}
    pins = {_dist_name(l) for l in (ROOT / "constraints.txt").read_text().splitlines() if "==" in l and not l.startswith("#")}
    used = third_party_imports()
    assert "psutil" in used and "torch" in used  # the scan sees imports (a vacuous pass would hide a broken scan)
    missing = {d: sorted({m for m, _ in w}) for d, w in used.items() if d not in required | extras}
    assert not missing, f"imported but not declared in pyproject.toml's dependencies: {missing}"
    eager_extras = {d: sorted(m for m, eager in w if eager) for d, w in used.items() if d in extras - required}
    assert not any(eager_extras.values()), f"an optional extra imported at module level: {eager_extras}"
    unranged = [r for r in project["dependencies"] if not re.search(r"[<>=~]", r)]
    assert not unranged, f"dependencies without a version range: {unranged}"
    unpinned = sorted((required | extras) - pins)
    assert not unpinned, f"dependencies not pinned in constraints.txt: {unpinned}"


# ------------------------------------------------------------------------------------------- tests by module


def test_every_module_has_a_row_in_the_tests_map():
    text = (ROOT / "tests" / "README.md").read_text()
    rows = set(re.findall(r"^\|\s*`([\w./]+\.py)`\s*\|", text, flags=re.M))
    files = {str(p.relative_to(ROOT)) for p in MODULES.values()}
    assert files - rows == set(), f"modules without a row in tests/README.md: {sorted(files - rows)}"
    assert rows - files == set(), f"rows for modules that do not exist: {sorted(rows - files)}"
    named = set(re.findall(r"`(tests/[\w/]+\.py)`", text))
    gone = {t for t in named if not (ROOT / t).exists()}
    assert not gone, f"tests/README.md names test files that do not exist: {sorted(gone)}"
