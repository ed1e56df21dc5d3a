"""The house rules of imports.

- connectors/ <- stack/ <- flows/, and no product code imports tests/ (or Prefect, below
  flows/).
- No import cycle among the product modules, counting imports made inside functions and
  under ``TYPE_CHECKING``: every module can be read knowing only those below it.
- Within stack/, packages sit on floors and import only from floors below their own
  (:data:`FLOORS`); the one exception is the CLI, which imports ``flows/`` lazily, inside
  the commands that run a flow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

PRODUCT = ("connectors", "stack", "flows")
FORBIDDEN = {
    "connectors": {"stack", "flows", "prefect", "tests"},
    "stack": {"flows", "prefect", "tests"},
    "flows": {"tests"},
}
LAZY_ALLOWED = {("stack/cli/runs.py", "flows")}
"""The CLI may import flows lazily, for the commands that run them."""

FLOORS: tuple[tuple[str, ...], ...] = (
    ("stack.errors", "stack.sql", "stack.redact"),
    ("stack.logs",),
    ("stack.config",),
    ("stack.secrets",),
    ("stack.warehouse",),
    ("stack.transform",),
    ("stack.load",),
    ("stack.lineage",),
    ("stack.bi",),
    ("stack.run",),
    ("stack.doctor", "stack.scaffold"),
    ("stack.cli",),
)
"""stack/ from the bottom up: a package imports only from the floors below its own.

The schema of ``stack.yml`` is at the bottom, so every package reads its settings without
importing the code of another. ``transform`` sits below ``load`` only because the run
ledger records dbt's node results; nothing in ``transform`` reads the ledger."""


@dataclass(frozen=True)
class Import:
    """One import statement's target, as a dotted module name."""

    module: str
    lazy: bool
    """Made inside a function (it runs when the function does, not at import)."""


def imports(path: Path) -> set[str]:
    """Top-level names of everything ``path`` imports (``stack``, ``prefect``...)."""
    return {i.module.split(".")[0] for i in module_imports(path, module_name(path))}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path: Path, name: str) -> Iterator[Import]:
    """Every import of a module: top-level, in functions, under ``TYPE_CHECKING``.

    ``from package import name`` counts as importing ``package.name`` (which is a module or
    an attribute of ``package``; :func:`import_graph` tells them apart).
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(node: ast.AST, lazy: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                yield from (Import(alias.name, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                yield Import(base, lazy)
                yield from (Import(f"{base}.{alias.name}", lazy) for alias in child.names)
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text()), False)


def product_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PRODUCT
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def import_graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports, with the packages whose ``__init__`` that
    runs (importing ``stack.load.ledger`` from outside ``stack.load`` runs
    ``stack/load/__init__.py`` first). The CLI's lazy imports of flows are left out."""
    modules = product_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imported in module_imports(path, name):
            target = imported.module
            while target and target not in modules:  # an attribute: its module
                target = target.rpartition(".")[0]
            if not target or target == name:
                continue
            if (str(path.relative_to(ROOT)), target.split(".")[0]) in LAZY_ALLOWED:
                continue
            own = _ancestors(name) | {name}
            graph[name] |= {p for p in _ancestors(target) | {target} if p not in own}
    return graph


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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


def floor(module: str) -> int | None:
    for level, packages in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return level
    return None


def package(module: str) -> str:
    """The unit a floor holds: ``stack.load`` for ``stack.load.sync``, ``stack.sql`` itself."""
    return ".".join(module.split(".")[:2])


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_lower_layers(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        bad = {n for n in imports(path) & FORBIDDEN[package] if (relative, n) not in LAZY_ALLOWED}
        if bad:
            offenders.append(f"{relative}: {sorted(bad)}")
    assert offenders == []


def test_the_cli_imports_flows_only_inside_commands():
    cli = ROOT / "stack" / "cli" / "runs.py"
    flows = [i for i in module_imports(cli, "stack.cli.runs") if i.module.split(".")[0] == "flows"]
    assert flows, "the CLI runs flows: this test should see those imports"
    assert [i.module for i in flows if not i.lazy] == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_graph_counts_what_runs():
    """Imports inside functions count, and so does the ``__init__`` of a package imported
    from outside it; a cycle is found, a chain is not."""
    graph = import_graph()
    assert {"stack.warehouse.duckdb", "stack.warehouse.snowflake"} <= graph["stack.warehouse"]
    assert "stack.transform" in graph["stack.load.ledger"]  # runs stack/transform/__init__.py
    assert "stack.load" not in graph["stack.load.sync"]  # its own package: already running
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_stack_module_has_a_floor():
    assert [m for m in product_modules() if m.startswith("stack.") and floor(m) is None] == []


def test_stack_packages_import_only_from_floors_below():
    offenders = []
    for module, targets in import_graph().items():
        if not module.startswith("stack."):
            continue
        for target in targets:
            if not target.startswith("stack.") or package(target) == package(module):
                continue
            below, above = floor(target), floor(module)
            if below is None or above is None or below >= above:
                offenders.append(f"{module} -> {target}")
    assert sorted(offenders) == []
