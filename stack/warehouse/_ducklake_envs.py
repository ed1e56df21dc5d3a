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

Both hold the catalogs they read through DuckDB's file lock (:func:`_held`), which
readers share and a writer takes alone: no commit lands between reading a
catalog's snapshot and copying or replacing it (a writer's open waits, as for any
other process), and a WAL that a dead process left is folded into its catalog
first (copying the file alone would drop those commits; renaming a catalog over
one with a WAL would replay it onto the wrong file). One publish into a warehouse
runs at a time (a file lock in ``W/.locks``).

A clone **as of a version** rolls its catalog copy back to that version
(:mod:`stack.warehouse._ducklake_rollback`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

from stack.errors import WarehouseBusy, WarehouseError
from stack.warehouse._ducklake_rollback import roll_back

CATALOG_FILE = "catalog.ducklake"
DATA_DIR = "data"
BASE_MARK = ".mds_base_snapshot"
"""File in a clone holding the published snapshot id it was taken at."""
BUSY_WAIT_SECONDS = 30.0
_POLL_SECONDS = 0.2
_T = TypeVar("_T")


class Locked(Exception):
    """Another process holds the file: the same attempt may succeed a moment later."""


def wait_while_locked(attempt: Callable[[], _T], busy_timeout: float, busy: WarehouseBusy) -> _T:
    """Call ``attempt`` until it stops raising :class:`Locked`, polling every 0.2 s.

    Args:
        attempt: opens or locks something; raises :class:`Locked` (``from`` the
            driver's error, if any) while another process holds it.
        busy_timeout: seconds to keep trying.
        busy: raised once the time is up, from the last :class:`Locked`'s cause.

    Returns:
        What ``attempt`` returned.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return attempt()
        except Locked as locked:
            if time.monotonic() >= deadline:
                raise busy from locked.__cause__
            time.sleep(_POLL_SECONDS)


def open_error(exc: duckdb.IOException, message: str) -> Exception:
    """What a failed DuckDB open means: :class:`Locked` for a file lock held elsewhere
    (worth waiting on), else a :class:`WarehouseError` saying ``message``."""
    if "lock" in str(exc).lower():
        return Locked()
    return WarehouseError(f"{message}: {exc}")


def environment_path(warehouse: Path, name: str) -> Path:
    """Where environment ``name`` of the warehouse at ``warehouse`` lives (a sibling folder)."""
    if not name or "/" in name or name.startswith("."):
        raise WarehouseError(
            f"invalid environment name {name!r}", hint="use letters, digits, '-' and '_'"
        )
    return warehouse.parent / f"{warehouse.name}.{name}"


def clone_lake(
    source: Path, target: Path, busy_timeout: float = BUSY_WAIT_SECONDS, as_of: int | None = None
) -> None:
    """Make ``target`` a zero-copy clone of the lake at ``source`` (replacing it).

    ``source`` is held for the copy: its base snapshot is the one copied. With ``as_of``,
    the clone holds the lake as it was at that version (:func:`roll_back`): it is made in
    a folder of its own and replaces ``target`` only once rolled back, so a version that
    cannot be cloned leaves ``target`` as it was.

    Raises:
        NotKept: ``as_of`` is a version the lake no longer keeps.
        WarehouseError: the lake cannot be cloned (as of that version).
    """
    if not (source / CATALOG_FILE).exists():
        raise WarehouseError(
            f"nothing to clone: {source} has no catalog",
            hint="run a sync first, or check the target's path",
        )
    if as_of is not None:  # what a killed clone of this environment left half made
        for left in target.parent.glob(f".{target.name}.*"):
            drop_lake(left)
    made = target if as_of is None else target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    drop_lake(made)
    try:
        (made / DATA_DIR).mkdir(parents=True)
        with _held(source / CATALOG_FILE, busy_timeout) as held:
            base = _snapshot(held)
            shutil.copy2(source / CATALOG_FILE, made / CATALOG_FILE)
            _link_tree(source / DATA_DIR, made / DATA_DIR)
        if as_of is not None:
            roll_back(made / CATALOG_FILE, made / DATA_DIR, as_of)
        set_data_path(made / CATALOG_FILE, target / DATA_DIR)
        (made / BASE_MARK).write_text(str(base))
    except BaseException:
        if made != target:
            drop_lake(made)
        raise
    if made != target:
        drop_lake(target)
        os.rename(made, target)


def publish_lake(audit: Path, published: Path, busy_timeout: float = BUSY_WAIT_SECONDS) -> None:
    """Atomically make the published lake hold what ``audit`` holds.

    Raises:
        WarehouseError: the published lake changed since ``audit`` was cloned from it.
        WarehouseBusy: another process held either lake for ``busy_timeout`` seconds.
    """
    base = int((audit / BASE_MARK).read_text()) if (audit / BASE_MARK).exists() else None
    with (
        _publishing(published, busy_timeout),
        _held(audit / CATALOG_FILE, busy_timeout),
        _held(published / CATALOG_FILE, busy_timeout) as held,
    ):
        now = _snapshot(held)
        if base is None or now != base:
            raise WarehouseError(
                f"the published warehouse changed while {audit.name} was being audited "
                f"(snapshot {base} -> {now})",
                hint="rerun: the next run audits on top of the newer data",
            )
        _link_tree(audit / DATA_DIR, published / DATA_DIR, skip_existing=True)
        staged = published / f"{CATALOG_FILE}.{uuid.uuid4().hex[:8]}.publishing"
        try:
            shutil.copy2(audit / CATALOG_FILE, staged)
            set_data_path(staged, published / DATA_DIR)
            fsync(staged)
            os.replace(staged, published / CATALOG_FILE)
        finally:
            staged.unlink(missing_ok=True)
        fsync(published)


def drop_lake(path: Path) -> None:
    """Remove an environment's folder (its links; the other side's files stay)."""
    if path.exists():
        shutil.rmtree(path)


def snapshot_id(catalog: Path) -> int:
    """The latest DuckLake snapshot id recorded in a catalog file."""
    with duckdb.connect(str(catalog), read_only=True) as con:
        return _snapshot(con)


def _snapshot(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT max(snapshot_id) FROM ducklake_snapshot").fetchone()
    if row is None or row[0] is None:
        raise WarehouseError("the DuckLake catalog holds no snapshot")
    return int(row[0])


@contextmanager
def _held(catalog: Path, busy_timeout: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to ``catalog`` for the block, its WAL folded in first.

    DuckDB locks the file while it is open: readers share the lock, a writer needs it
    alone, so no process commits to the catalog until the block ends (it waits to
    open it). A WAL next to the catalog is what a process that died holding it left
    (one still holding it keeps us out): a read-write open replays it into the file.
    """
    wal = catalog.with_name(catalog.name + ".wal")
    if wal.exists():
        with _connect(catalog, busy_timeout, read_only=False) as con:
            con.execute("CHECKPOINT")
    with _connect(catalog, busy_timeout, read_only=True) as con:
        if wal.exists():  # written and left again between the two opens
            raise WarehouseBusy(
                f"{catalog.parent} was being written while mdstack copied it",
                hint="rerun when no other process writes the warehouse",
            )
        yield con


def _connect(catalog: Path, busy_timeout: float, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open a catalog file, waiting up to ``busy_timeout`` seconds for a holder to let go."""

    def attempt() -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(catalog), read_only=read_only)
        except duckdb.IOException as exc:
            raise open_error(exc, f"cannot open {catalog}") from exc

    busy = WarehouseBusy(
        f"the warehouse {catalog.parent} is in use by another process",
        hint="wait for the other mdstack (or dbt, or a BI tool) to finish",
    )
    return wait_while_locked(attempt, busy_timeout, busy)


@contextmanager
def _publishing(published: Path, busy_timeout: float) -> Iterator[None]:
    """Hold the warehouse's publish lock: two publishes never both pass the snapshot check."""
    folder = published / ".locks"
    folder.mkdir(exist_ok=True)
    busy = WarehouseBusy(
        f"another publish into {published} is in progress", hint="rerun when it finished"
    )
    with open(folder / "publish.lock", "w") as handle:

        def attempt() -> None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Locked from None

        wait_while_locked(attempt, busy_timeout, busy)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (a rename is durable once both are)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def set_data_path(catalog: Path, data: Path) -> None:
    """Point a DuckDB-file catalog at the folder its data files are in (its files' paths
    are relative to it): after a clone, and after the warehouse folder moved."""
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
