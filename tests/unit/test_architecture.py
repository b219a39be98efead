"""House rules that keep the floors one-way (ARCHITECTURE.md), checked on the real import graph.

The graph is built with `ast` over echo_core/ and pipelines/: every `import` counts, including the lazy ones
inside functions (they still run, so they are still edges). A package's `__init__.py` is the module named
after the package. `from pkg import name` is an edge to `pkg` (its namespace is read, so its `__init__` must
be importable at that point) and, when `pkg.name` is a module, an edge to that submodule too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("echo_core", "pipelines")
MLOPS_LIBRARIES = {"mlflow", "prefect", "dvc", "great_expectations", "typer"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the two packages, by dotted name."""
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported_names(tree: ast.AST, name: str, is_package: bool) -> Iterator[str]:
    """Dotted names a module imports, relative imports resolved against the module's own package."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]  # each extra dot climbs one package
                base = f"{anchor}.{base}" if base else anchor
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


@cache
def imports_of(name: str) -> frozenset[str]:
    path = modules()[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return frozenset(imported_names(tree, name, path.name == "__init__.py"))


def internal_target(imported: str, known: Mapping[str, Path]) -> str | None:
    """The project module an imported dotted name lands on (its longest known prefix), if any."""
    parts = imported.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module → project modules it imports; self-edges dropped (`from . import x` in a package's __init__)."""
    known = modules()
    graph = {}
    for name in known:
        targets = {internal_target(i, known) for i in imports_of(name)}
        graph[name] = frozenset(t for t in targets if t and t != name)
    return graph


def find_cycles(graph: Mapping[str, frozenset[str] | set[str]]) -> list[list[str]]:
    """One cycle path ([a, b, ..., a]) per strongly connected component that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:  # node is the root of a component: pop it off the stack
            component = set()
            while node not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(min(c), graph, c) for c in components]


def _cycle_through(start: str, graph: Mapping[str, frozenset[str] | set[str]], component: set[str]) -> list[str]:
    """Shortest path start → ... → start inside one strongly connected component (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    return [*paths[node], start]
                if nxt in component and nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is on no cycle of {sorted(component)}")


def in_area(name: str, areas: tuple[str, ...]) -> bool:
    return any(name == area or name.startswith(f"{area}.") for area in areas)


def offenders(sources: tuple[str, ...], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Modules in `sources` that import anything in `forbidden` (project modules or library roots)."""
    found = {}
    for name in modules():
        if in_area(name, sources):
            bad = {i for i in imports_of(name) if in_area(i, forbidden)}
            bad = sorted(i for i in bad if i.rpartition(".")[0] not in bad)  # `x` and `x.name`: report `x`
            if bad:
                found[name] = bad
    return found


def test_cycle_finder_reports_the_cycle_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"d"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_graph_resolves_relative_package_and_lazy_imports():
    source = "from . import api\nfrom .shards import Job\nfrom .. import errors\ndef f():\n    import numpy\n"
    names = set(imported_names(ast.parse(source), "echo_core.metrics", is_package=True))
    assert {"echo_core.metrics.api", "echo_core.metrics.shards", "echo_core.errors", "numpy"} <= names
    names = set(imported_names(ast.parse(source), "echo_core.metrics.api", is_package=False))
    assert {"echo_core.metrics.shards", "echo_core.errors"} <= names
    assert internal_target("echo_core.metrics.api.compute_metrics", modules()) == "echo_core.metrics.api"
    assert module_name(ROOT / "echo_core" / "metrics" / "__init__.py") == "echo_core.metrics"


def test_no_import_cycles():
    cycles = [" -> ".join(c) for c in find_cycles(import_graph())]
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


FLOOR_RULES = {
    "echo_core is pure": (("echo_core",), ("pipelines", *sorted(MLOPS_LIBRARIES))),
    "the MLflow adapter and validation sit below flows, serving, ops and the CLI": (
        ("pipelines.registry", "pipelines.tracking", "pipelines.validation"),
        ("pipelines.flows", "pipelines.serving", "pipelines.ops", "pipelines.commands", "pipelines.cli"),
    ),
    "flows, ops and serving sit below the CLI": (
        ("pipelines.flows", "pipelines.ops", "pipelines.serving"), ("pipelines.commands", "pipelines.cli"),
    ),
    "ops never reach into flows": (("pipelines.ops",), ("pipelines.flows",)),
    "generation, evaluation, serving and flows load models from echo_core.models, not the trainer": (
        ("echo_core.generation", "echo_core.evaluation", "pipelines.serving", "pipelines.flows"),
        ("echo_core.training",),
    ),
    "the typer CLI is the one entry point (no argparse)": (PACKAGES, ("argparse",)),
}


@pytest.mark.parametrize("rule", FLOOR_RULES)
def test_floors_are_one_way(rule: str):
    sources, forbidden = FLOOR_RULES[rule]
    assert offenders(sources, forbidden) == {}, rule


def test_floor_rule_reports_the_forbidden_import(monkeypatch):
    fake = frozenset({"echo_core.errors", "mlflow.tracking"})
    monkeypatch.setattr(sys.modules[__name__], "imports_of", lambda name: fake)
    assert offenders(("echo_core.metrics.api",), ("mlflow",)) == {"echo_core.metrics.api": ["mlflow.tracking"]}


def names_mlflow_client(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "MlflowClient":
            return True
        if isinstance(node, ast.Attribute) and node.attr == "MlflowClient":
            return True
        if isinstance(node, ast.alias) and node.name.split(".")[-1] == "MlflowClient":
            return True
    return False


def test_mlflow_client_only_in_the_mlflow_adapter():
    assert names_mlflow_client(ast.parse("import mlflow\nc = mlflow.tracking.MlflowClient()"))
    users = sorted(
        str(p.relative_to(ROOT)) for p in modules().values() if names_mlflow_client(ast.parse(p.read_text("utf-8")))
    )
    assert set(users) <= {"pipelines/registry.py", "pipelines/tracking.py"}, users


def test_great_expectations_only_in_the_gx_module():
    users = [str(modules()[name].relative_to(ROOT)) for name in offenders(PACKAGES, ("great_expectations",))]
    assert users == ["pipelines/validation/gx.py"]


def imports_through_test_modules(tree: ast.AST, name: str, test_modules: set[str]) -> list[str]:
    """Imported dotted names that pass through a test module (`unit.test_x`, `test_x`, `from unit import test_x`)."""
    return sorted({n for n in imported_names(tree, name, is_package=False) if test_modules & set(n.split("."))})


def test_no_test_module_imports_another():
    tests = ROOT / "tests"
    test_modules = {p.stem for p in tests.rglob("test_*.py")}
    snippet = ast.parse("from unit.test_a import helper\nfrom unit import test_a\nfrom support.data import x\n")
    found = imports_through_test_modules(snippet, "integration.test_b", {"test_a"})
    assert found == ["unit.test_a", "unit.test_a.helper"]
    found = {}
    for path in sorted(tests.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bad = imports_through_test_modules(tree, module_name(path, tests), test_modules)
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    assert found == {}, f"import helpers from tests/support, not from test modules: {found}"


def test_cli_help_is_fast_and_lazy():
    """`echoforge --help` must not import torch/diffusers/mlflow/GX (they cost seconds each)."""
    code = (
        "import sys, pipelines.cli as c\n"
        "heavy = [m for m in ('torch', 'diffusers', 'mlflow', 'great_expectations', 'prefect') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy imports at CLI start-up: {out.stdout.strip()}"
