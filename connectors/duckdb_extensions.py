"""DuckDB extensions from their PyPI wheels: installed with mdstack, never downloaded.

DuckDB's ``INSTALL`` fetches extensions over the network at first use; the wheels
``duckdb-extension-ducklake``, ``duckdb-extension-postgres-scanner`` and
``duckdb-extension-httpfs`` ship the same binaries, pinned to DuckDB's version, so a machine
without internet access runs too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import duckdb


def packaged_extension(package: str, extension: str) -> Path | None:
    """The binary of ``extension`` that the Python package ``package`` ships for the running
    DuckDB, or None when the package or that version's binary is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "extensions" / f"v{duckdb.__version__}" / f"{extension}.duckdb_extension"
    return path if path.exists() else None
