"""The import graph of ``src/conveyor``, read from the source (every import statement,
those under ``TYPE_CHECKING`` and inside functions included): no module imports another
in a cycle, and no import runs upward across the layers of DESIGN.md."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest

import conveyor.workloads

SRC = Path(__file__).resolve().parent.parent / "src"

LAYERS = (
    ("cli", ("conveyor.cli",)),
    ("api", ("conveyor.api",)),
    ("notify", ("conveyor.notify",)),
    ("workloads", ("conveyor.workloads",)),
    # The public API: the workloads are written against it, as a user's handlers are.
    ("public API", ("conveyor",)),
    # Identity without HTTP: the API and the CLI call it.
    ("accounts", ("conveyor.accounts",)),
    ("engine", ("conveyor.engine",)),
    ("store", ("conveyor.store",)),
    ("base", ("conveyor.config", "conveyor.logs", "conveyor.outbound")),
)
"""Top to bottom: a module may import its own layer and those below it."""

HTTP_STACK = ("fastapi", "starlette", "uvicorn")
"""What only the layers that serve HTTP may import (the engine never imports FastAPI, and a
worker process never loads it)."""


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "conveyor").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """Every name ``module`` imports: a conveyor module where it names one (``from
    conveyor.engine import limits`` is ``conveyor.engine.limits``), else the top-level
    package of a third-party import."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            names.update(submodules)
            if len(submodules) < len(node.names):
                names.add(base)
    return {
        name if name.split(".")[0] == "conveyor" else name.split(".")[0]
        for name in names
        if name != module
    }


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> int:
    """The index in :data:`LAYERS` of the longest prefix that names ``module``."""
    matches = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return max(matches)[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in graph:
                continue
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_from_the_source() -> None:
    # A check of the reader itself, so that an empty graph cannot pass the tests below.
    assert "conveyor.engine.kinds" in GRAPH["conveyor.engine.client"]
    assert "conveyor.engine.limits" in GRAPH["conveyor.engine.client"]  # from ... import limits
    assert "conveyor.store.records" in GRAPH["conveyor.engine.kinds"]
    assert "fastapi" in GRAPH["conveyor.api.app"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_in_a_cycle() -> None:
    assert _cycles(GRAPH) == []


def test_no_import_runs_upward_across_the_layers() -> None:
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {name} ({LAYERS[_layer(name)][0]})"
        for module, names in sorted(GRAPH.items())
        for name in sorted(names)
        if name.startswith("conveyor") and _layer(name) < _layer(module)
    ]
    assert upward == []


@pytest.mark.parametrize("layer", ["engine", "store", "base", "workloads"])
def test_the_lower_layers_never_import_the_http_stack(layer: str) -> None:
    index = next(i for i, (name, _) in enumerate(LAYERS) if name == layer)
    offending = [
        f"{module} imports {name}"
        for module, names in sorted(GRAPH.items())
        if _layer(module) == index
        for name in sorted(names)
        if name in HTTP_STACK
    ]
    assert offending == []


def test_the_workload_modules_are_listed_as_users_import_them() -> None:
    found = {
        f"conveyor.workloads.{info.name}"
        for info in pkgutil.iter_modules(conveyor.workloads.__path__)
    }
    assert set(conveyor.workloads.MODULES) == found
