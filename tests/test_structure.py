"""The architecture's boundaries, read from the source with `ast` (STYLE.md: "no import cycles", "dependencies
point one way", size budgets): no import cycle among tether's modules; the math imports only torch and the
standard library; the monitor, report, world and redteam packages never reach the stages; the rater app never
imports torch; no module over 600 lines, no function over 60.

What counts as an import: every `import` and `from ... import` in a module, at module level, inside a function
(a lazy import used to break a cycle is still a dependency of the design) and under `if TYPE_CHECKING:` (a module
that names another's type in its signatures depends on it). `from pkg import name` depends on the submodule
pkg.name when there is one, else on pkg itself. Importing a submodule also runs its package's __init__ first, but
that is not counted as a dependency on the package: a package that re-exports its submodules would otherwise be in
a cycle with each of them, and its __init__ only ever runs before theirs.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


@cache
def modules() -> dict[str, Path]:
    """Dotted name -> file of every module under src/ (a package is its __init__.py)."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(name: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    """The dotted names an import statement of module `name` reaches (modules of src/ or anything else)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base for alias in node.names]


def _owner(dotted: str) -> str | None:
    """The module of src/ that `dotted` names (its longest prefix that is one), or None outside src/."""
    while dotted and dotted not in modules():
        dotted = dotted.rpartition(".")[0]
    return dotted or None


@cache
def imports() -> dict[str, frozenset[str]]:
    """Module -> every dotted name it imports anywhere in its body (top-level names outside src/ included)."""
    out = {}
    for name, path in modules().items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(_imported(name, node, path.name == "__init__.py"))
        out[name] = frozenset(found)
    return out


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module -> the modules of src/ it imports (itself left out)."""
    return {name: frozenset(o for o in map(_owner, found) if o and o != name) for name, found in imports().items()}


def reachable(roots: list[str]) -> set[str]:
    """Every module of src/ that importing `roots` can import, directly or through others."""
    seen, todo = set(), list(roots)
    while todo:
        for dep in graph()[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def package(prefix: str) -> list[str]:
    return [m for m in modules() if m == prefix or m.startswith(prefix + ".")]


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph()[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph()):
        if v not in index:
            visit(v)
    return found


# ---------------------------------------------------------------------------------------------
# The reader itself can fail


def test_the_import_reader_sees_every_kind_of_import():
    g = graph()
    assert "tether.stages.dpo.pairs" in g["tether.stages.dpo"]  # from package import submodule, in an __init__
    assert "tether.math.agreement" in g["tether.raters.stats"]  # from module import name
    assert "tether.serve.api" in g["tether.serve"]  # inside a function (run's lazy import)
    assert "tether.serve.config" in g["tether.serve.api"]  # under `if TYPE_CHECKING:`
    assert "tether.world.build" in g["tether.stages.online"]  # inside setup()
    assert "torch" in imports()["tether.math.kl"] and g["tether.math.kl"] == frozenset()  # torch is not of src/


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    fake = {**graph(), "tether.errors": graph()["tether.errors"] | {"tether.cli"}}  # cli reaches errors
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: fake)
    assert any({"tether.errors", "tether.cli"} <= set(c) for c in cycles())


# ---------------------------------------------------------------------------------------------
# The boundaries


def test_no_import_cycle_among_tether_modules():
    assert cycles() == []


def test_the_math_imports_only_torch_and_the_standard_library():
    math_modules = package("tether.math")
    assert len(math_modules) == 10  # the package and its nine modules
    allowed = {"torch", "__future__", *sys.stdlib_module_names}
    for name in math_modules:
        outside = {d for d in imports()[name] if not d.startswith("tether.math")}
        assert {d.split(".")[0] for d in outside} <= allowed, (name, sorted(outside))
    assert imports()["tether.math"] == frozenset()  # an empty __init__: the rater app loads agreement without torch


@pytest.mark.parametrize("prefix", ["tether.monitor", "tether.report", "tether.world", "tether.redteam",
                                    "tether.raters", "tether.math"])
def test_no_stage_is_reached_from(prefix):
    assert sorted(m for m in reachable(package(prefix)) if m.startswith("tether.stages")) == []


def test_the_rater_app_never_imports_torch():
    app = package("tether.raters")
    heavy = {"torch", "transformers", "safetensors", "peft"}
    for name in app + sorted(reachable(app)):  # the app and every tether module it can import
        assert not {d.split(".")[0] for d in imports()[name]} & heavy, name
    probe = ("import importlib, pkgutil, sys, tether.raters\n"
             "for m in pkgutil.walk_packages(tether.raters.__path__, 'tether.raters.'):\n"
             "    importlib.import_module(m.name)\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------
# Size budgets (STYLE.md practice 10)


def test_modules_stay_under_600_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_functions_stay_under_60_lines():
    long = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # def line to last line, docstring included
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(SRC)}:{node.lineno} {node.name}"] = lines
    assert long == {}
