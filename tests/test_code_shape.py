"""The code's shape, checked on the package as installed (tests/support/layers.py
assembles it): no import cycle between modules, no Python function over
:data:`MAX_FUNCTION_LINES` lines and no module over :data:`MAX_MODULE_LINES`
(README, Layout; the package's sources, generated or data files aside - it
ships none in Python). Each check is shown to catch a deliberate breach."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.layers import package_tree

MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 600


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return package_tree(tmp_path_factory.mktemp("tree"))


# -- import cycles --------------------------------------------------------------------
_GRAPH = """
import json, grimp
graph = grimp.build_graph("segvol_rt", cache_dir=None)
print(json.dumps({m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}))
"""


def import_graph(tree: Path) -> dict[str, set[str]]:
    """Each module of ``segvol_rt`` (in ``tree``) -> the package's modules it imports
    (module level, in functions and under ``TYPE_CHECKING`` alike), as grimp reads them.
    In a fresh interpreter with ``tree`` first on the path: this one has the
    checkout's package imported already."""
    pytest.importorskip("grimp", reason="grimp comes with import-linter (dev extra)")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", _GRAPH], cwd=tree, env=env, capture_output=True, text=True, timeout=300,
                         check=True)
    return {m: set(targets) for m, targets in json.loads(out.stdout).items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more
    than one module (Tarjan's algorithm, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycles_finds_a_circle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle(tree):
    assert cycles(import_graph(tree)) == []


def test_a_deliberate_import_circle_is_found(tmp_path):
    tree = package_tree(tmp_path)
    # the lower module importing the higher one back, under TYPE_CHECKING: it still counts
    path = tree / "segvol_rt" / "bench" / "timing.py"
    path.write_text(path.read_text() + "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from segvol_rt.bench.report import Report  # a deliberate circle\n")
    assert ["segvol_rt.bench.report", "segvol_rt.bench.timing"] in cycles(import_graph(tree))


# -- function and module lengths -------------------------------------------------------
def python_sources(tree: Path) -> list[Path]:
    """The package's Python files, as installed (export/ and kernels/ mapped in)."""
    return sorted((tree / "segvol_rt").rglob("*.py"))


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (N lines)`` of each function or method over ``limit``
    lines, its decorators and docstring included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = (node.end_lineno or node.lineno) - first + 1
            if lines > limit:
                out.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    return out


def long_module(path: Path, limit: int = MAX_MODULE_LINES) -> str | None:
    lines = len(path.read_text().splitlines())
    return f"{path} ({lines} lines)" if lines > limit else None


def test_no_function_is_over_60_lines(tree):
    assert [f for p in python_sources(tree) for f in long_functions(p)] == []


def test_no_module_is_over_600_lines(tree):
    assert [m for m in map(long_module, python_sources(tree)) if m] == []


def test_a_deliberately_long_function_and_module_are_found(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f"def short():\n    return 1\n\n\n@staticmethod\ndef long():\n{body}")
    assert long_functions(path) == [f"{path}:6 long ({MAX_FUNCTION_LINES + 2} lines)"]
    assert long_module(path) is None
    path.write_text("\n" * MAX_MODULE_LINES + "x = 1\n")
    assert long_module(path) == f"{path} ({MAX_MODULE_LINES + 1} lines)"
