"""DuckDB extensions from their PyPI wheels: installed with mdstack, never downloaded.

DuckDB's ``INSTALL`` fetches extensions over the network at first use; the wheels
``duckdb-extension-ducklake``, ``duckdb-extension-postgres-scanner`` and
``duckdb-extension-httpfs`` ship the same binaries, pinned to DuckDB's version, so a machine
without internet access runs too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import duckdb

FROM_WHEELS_ONLY: dict[str, Any] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_unsigned_extensions": True,
}
"""Settings of a DuckDB connection that loads extensions only with :func:`load`.

DuckDB checks an extension's signature at every ``LOAD`` by hashing the whole binary
(36-42 MB here: about 0.1 s per extension and connection, a third of an incremental
sync). The binaries :func:`load` takes are the wheels' own files in site-packages,
installed beside DuckDB's own library and trusted as it is (the installer checked their
hashes), so the check is skipped for them; with autoload and autoinstall off, nothing
else is loaded, and the extension folder a warehouse shares with dbt and BI tools (they
keep the check) is never read.
"""


def packaged_extension(package: str, extension: str) -> Path | None:
    """The binary of ``extension`` that the Python package ``package`` ships for the running
    DuckDB, or None when the package or that version's binary is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "extensions" / f"v{duckdb.__version__}" / f"{extension}.duckdb_extension"
    return path if path.exists() else None


def load(con: duckdb.DuckDBPyConnection, *binaries: Path) -> None:
    """Load each extension binary by its path (a connection opened with
    :data:`FROM_WHEELS_ONLY`, the binaries from :func:`packaged_extension`)."""
    for binary in binaries:
        con.execute(f"LOAD '{str(binary).replace(chr(39), chr(39) * 2)}'")
