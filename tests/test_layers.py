"""The house rule: connectors/ <- stack/ <- flows/, and no product code imports tests/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

FORBIDDEN = {
    "connectors": {"stack", "flows", "prefect", "tests"},
    "stack": {"flows", "prefect", "tests"},
    "flows": {"tests"},
}
LAZY_ALLOWED = {("stack/cli.py", "flows")}
"""The CLI may import flows lazily, for the commands that run them."""


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_lower_layers(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        bad = {n for n in imports(path) & FORBIDDEN[package] if (relative, n) not in LAZY_ALLOWED}
        if bad:
            offenders.append(f"{relative}: {sorted(bad)}")
    assert offenders == []
