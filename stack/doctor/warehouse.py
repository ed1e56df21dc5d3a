"""The active target: it opens, nobody else holds it, its catalog reads, its disk has room.

A DuckDB catalog is a file one process writes at a time: when another holds it, DuckDB's
error names that process's PID, which the check reports with the way out. This check opens
an existing catalog read-only, waits for nobody, and creates none (the first sync does).
Snowflake: it connects and answers a query.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from stack.config import StackConfig
from stack.doctor.check import Check, TimedOut, bounded, failed
from stack.errors import MdstackError, WarehouseBusy
from stack.run import pipeline
from stack.secrets import Resolver
from stack.warehouse import Warehouse
from stack.warehouse.duckdb import ALIAS, DuckDBWarehouse

AREA = "warehouse"
MIN_FREE_BYTES = 1 << 30
"""Less free disk than this at the warehouse is worth a warning."""
OPEN_SECONDS = 60.0
_PID = re.compile(r"\(PID (\d+)\)")


def warehouse_checks(
    config: StackConfig,
    target: str | None,
    resolver: Resolver,
    min_free: int = MIN_FREE_BYTES,
) -> Iterator[Check]:
    """The checks of the target ``--target`` names (default: the file's ``target:``)."""
    name = target or config.target
    try:
        warehouse = pipeline.open_target(config, target, resolver)
    except MdstackError as exc:
        yield failed(AREA, f"{name} opens", exc)
        return
    if isinstance(warehouse, DuckDBWarehouse):
        yield from _duckdb(name, warehouse, min_free)
    else:
        yield _queries(name, warehouse, "connects", "SELECT CURRENT_VERSION() AS version")


def _duckdb(name: str, warehouse: DuckDBWarehouse, min_free: int) -> Iterator[Check]:
    if not warehouse.catalog.exists():
        yield Check(
            f"{name} opens",
            "ok",
            f"no catalog yet at {warehouse.catalog}: the first sync creates it",
            area=AREA,
        )
    else:
        warehouse.read_only, warehouse.busy_timeout = True, 0.0
        yield _queries(
            name,
            warehouse,
            "opens, catalog readable",
            "SELECT (SELECT count(*) FROM information_schema.tables"
            f" WHERE table_catalog = '{ALIAS}') AS tables,"
            f" (SELECT max(snapshot_id) FROM {ALIAS}.snapshots()) AS snapshot",
        )
    yield _disk(warehouse.path, min_free)


def _queries(name: str, warehouse: Warehouse, what: str, query: str) -> Check:
    """Open the warehouse, run ``query``, and say what its one row holds."""

    def attempt() -> str:
        with warehouse:
            row = warehouse.query(query).to_pylist()[0]
        return ", ".join(f"{k.lower()} {v}" for k, v in row.items())

    try:
        return Check(f"{name} {what}", "ok", bounded(attempt, OPEN_SECONDS), area=AREA)
    except WarehouseBusy as exc:
        return _locked(name, exc)
    except MdstackError as exc:
        return failed(AREA, f"{name} {what}", exc)
    except TimedOut as exc:
        return Check(
            f"{name} {what}", "fail", str(exc), "check the network and the account", area=AREA
        )


def _locked(name: str, exc: WarehouseBusy) -> Check:
    """The lock's holder, from DuckDB's own error (its cause), and how to free the file."""
    found = _PID.search(str(exc.__cause__ or ""))
    if found is None:
        return failed(AREA, f"{name} not locked", exc)
    pid = found.group(1)
    return Check(
        f"{name} not locked",
        "fail",
        f"another process holds the catalog: PID {pid} ({_command(pid)})",
        f"wait for it to finish (another run, dbt, a BI tool or a notebook), or stop it: "
        f"kill {pid}",
        area=AREA,
    )


def _command(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "command unknown"
    text = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    return text[:120] + ("..." if len(text) > 120 else "") if text else "command unknown"


def _disk(path: Path, min_free: int) -> Check:
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    detail = f"{free / (1 << 30):.1f} GiB free at {existing}"
    if free < min_free:
        return Check(
            "free disk",
            "warn",
            f"{detail} (under {min_free / (1 << 30):.1f} GiB): a load spills to it",
            "free some space, or move the target's path to a larger disk",
            area=AREA,
        )
    return Check("free disk", "ok", detail, area=AREA)
