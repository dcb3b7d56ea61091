"""The folders show the architecture and every arrow points down: the ``sdk`` package's
import graph, read from the source, has no cycle, and no capability imports a front door."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parent.parent / "sdk"
CAPABILITIES = ("_store", "_migration", "_sync", "_conflicts", "_transport")
FRONT_DOORS = ("sdk._client", "sdk._auto", "sdk._aio", "sdk.cli", "sdk._display")


def module_name(path: Path) -> str:
    parts = path.relative_to(SDK.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SDK.rglob("*.py")}


def is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def import_nodes(body: list[ast.stmt], *, deferred: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports in ``body``: at module level only, or (``deferred``) also those under
    ``if TYPE_CHECKING:`` and inside functions, which hide a cycle rather than remove it."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and is_type_checking(node) and not deferred:
            yield from import_nodes(node.orelse, deferred=deferred)
        elif deferred or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    yield from import_nodes(inner, deferred=deferred)


def imported_modules(name: str, *, deferred: bool) -> set[str]:
    """The ``sdk`` modules that ``name`` imports (a parent package's ``__init__`` aside)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in import_nodes(ast.parse(path.read_text()).body, deferred=deferred):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = package
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        if node.level:
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            found.add(candidate if candidate in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def graph(*, deferred: bool) -> dict[str, set[str]]:
    return {name: imported_modules(name, deferred=deferred) for name in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``edges`` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reader_sees_a_cycle_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert "sdk._wire.canonical" in imported_modules("sdk._fastjson", deferred=False)


@pytest.mark.parametrize(
    "deferred",
    [
        pytest.param(False, id="imports-run-at-import-time"),
        pytest.param(True, id="with-type-checking-and-function-level-imports"),
    ],
)
def test_the_sdk_import_graph_has_no_cycle(deferred):
    assert find_cycle(graph(deferred=deferred)) is None


def test_every_capability_has_its_folder_whose_init_re_exports_nothing():
    for capability in CAPABILITIES:
        init = SDK / capability / "__init__.py"
        assert init.is_file(), f"sdk/{capability}/ is not a package"
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), (
            f"{init} holds more than a docstring"
        )


def test_no_capability_imports_a_front_door():
    edges = graph(deferred=True)
    offenders = {
        name: sorted(edges[name] & set(FRONT_DOORS))
        for name in edges
        if name.split(".")[1:2] and name.split(".")[1] in CAPABILITIES
        if edges[name] & set(FRONT_DOORS)
    }
    assert offenders == {}
