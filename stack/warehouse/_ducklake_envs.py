"""Zero-copy environments of a DuckLake warehouse: clone, publish, drop.

A clone copies the catalog (a small DuckDB file) and **hard-links** every data
file, then points the copy's ``data_path`` at its own folder: about 0.05 s and
a few MB for a 2 GB lake, whatever its size. The file system's link count is
the reference count, so each side's writes, compaction and cleanup never
touch the other side's files.

Publishing an environment into the published warehouse links the audit's new
data files into the published data folder and then replaces the published
catalog file with the audit's in one ``rename`` — atomic on POSIX: a reader
that opened the old catalog keeps reading it, every later open sees the new.
Publishing refuses if the published warehouse changed after the clone was
taken (optimistic concurrency: nothing written meanwhile is lost).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb

from stack.errors import WarehouseError

CATALOG_FILE = "catalog.ducklake"
DATA_DIR = "data"
BASE_MARK = ".mds_base_snapshot"
"""File in a clone holding the published snapshot id it was taken at."""


def environment_path(warehouse: Path, name: str) -> Path:
    """Where environment ``name`` of the warehouse at ``warehouse`` lives (a sibling folder)."""
    if not name or "/" in name or name.startswith("."):
        raise WarehouseError(
            f"invalid environment name {name!r}", hint="use letters, digits, '-' and '_'"
        )
    return warehouse.parent / f"{warehouse.name}.{name}"


def clone_lake(source: Path, target: Path) -> None:
    """Make ``target`` a zero-copy clone of the lake at ``source`` (replacing it)."""
    if not (source / CATALOG_FILE).exists():
        raise WarehouseError(
            f"nothing to clone: {source} has no catalog",
            hint="run a sync first, or check the target's path",
        )
    if (source / f"{CATALOG_FILE}.wal").exists():
        raise WarehouseError(
            f"{source} is open in another process (its catalog has a WAL)",
            hint="clone when no mdstack, dbt or BI tool holds the warehouse",
        )
    drop_lake(target)
    (target / DATA_DIR).mkdir(parents=True)
    shutil.copy2(source / CATALOG_FILE, target / CATALOG_FILE)
    _link_tree(source / DATA_DIR, target / DATA_DIR)
    _set_data_path(target / CATALOG_FILE, target / DATA_DIR)
    (target / BASE_MARK).write_text(str(snapshot_id(source / CATALOG_FILE)))


def publish_lake(audit: Path, published: Path) -> None:
    """Atomically make the published lake hold what ``audit`` holds.

    Raises:
        WarehouseError: the published lake changed since ``audit`` was cloned from it.
    """
    base = int((audit / BASE_MARK).read_text()) if (audit / BASE_MARK).exists() else None
    now = snapshot_id(published / CATALOG_FILE)
    if base is None or now != base:
        raise WarehouseError(
            f"the published warehouse changed while {audit.name} was being audited "
            f"(snapshot {base} -> {now})",
            hint="rerun: the next run audits on top of the newer data",
        )
    _link_tree(audit / DATA_DIR, published / DATA_DIR, skip_existing=True)
    staged = published / f"{CATALOG_FILE}.publishing"
    shutil.copy2(audit / CATALOG_FILE, staged)
    _set_data_path(staged, published / DATA_DIR)
    os.replace(staged, published / CATALOG_FILE)


def drop_lake(path: Path) -> None:
    """Remove an environment's folder (its links; the other side's files stay)."""
    if path.exists():
        shutil.rmtree(path)


def snapshot_id(catalog: Path) -> int:
    """The latest DuckLake snapshot id recorded in a catalog file."""
    with duckdb.connect(str(catalog), read_only=True) as con:
        return int(con.execute("SELECT max(snapshot_id) FROM ducklake_snapshot").fetchone()[0])


def _set_data_path(catalog: Path, data: Path) -> None:
    with duckdb.connect(str(catalog)) as con:
        con.execute("UPDATE ducklake_metadata SET value = ? WHERE key = 'data_path'", [f"{data}/"])


def _link_tree(source: Path, target: Path, skip_existing: bool = False) -> None:
    """Hard-link every file under ``source`` into the same place under ``target``."""
    for root, _dirs, files in os.walk(source):
        into = target / Path(root).relative_to(source)
        into.mkdir(parents=True, exist_ok=True)
        for name in files:
            if skip_existing and (into / name).exists():
                continue
            os.link(Path(root) / name, into / name)
