"""mdstack: a zero-copy clone of a whole DuckLake warehouse (``clone_into``), or a plain copy.

Timed: the clone (``DuckDBWarehouse.clone_into``) or the copy (``shutil.copytree``, the
naive way). Reported: the clone's new disk (bytes of files not hard-linked to the source)
and, as a check, the row count read through the clone.

Usage: ``python clone.py clone|copy WAREHOUSE NAME``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from _report import Stopwatch, emit

from stack.warehouse.duckdb import DuckDBWarehouse


def new_bytes(source: Path, clone: Path) -> int:
    """Bytes under ``clone`` in files that are not hard links of files under ``source``."""
    inodes = {p.stat().st_ino for p in source.rglob("*") if p.is_file() and not p.is_symlink()}
    return sum(
        p.stat().st_size
        for p in clone.rglob("*")
        if p.is_file() and not p.is_symlink() and p.stat().st_ino not in inodes
    )


def main() -> None:
    mode, path, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    wh = DuckDBWarehouse(path)
    target = wh.environment(name).path
    with Stopwatch() as sw:
        if mode == "clone":
            wh.clone_into(name)
        else:
            shutil.copytree(path, target, symlinks=True)
            os.sync()
    added = new_bytes(path, target)
    rows = 0
    if mode == "clone":
        with wh.environment(name) as env:
            rows = env.query('SELECT count(*) AS n FROM "raw"."big"').to_pylist()[0]["n"]
    emit(sw.seconds, rows, new_bytes=added)


if __name__ == "__main__":
    main()
