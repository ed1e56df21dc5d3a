"""The engine's contract suite: the adapters it runs against, and the reference model.

The engine tests (``test_engine_*``) drive :func:`stack.load.sync.sync_stream` with a
:class:`tests.scripted.ScriptedSource` and compare what lands in the
warehouse with :func:`expected_rows`, a plain-Python model of each sync mode
written from ARCHITECTURE.md ("Sync modes and deletes"), never from the SQL:

* ``incremental_deduped``: one row per key, the values of the key's last event
  (inside one batch the higher cursor is the later event). A hard delete
  removes the key; a soft delete keeps its row with ``_mds_deleted_at`` set to
  the tombstone's time; a key emitted again is live again. A tombstone for a
  key never loaded leaves nothing.
* ``incremental_append``: every record is a row. A hard delete removes every
  row of the key read before the tombstone; a soft delete marks them.
* ``full_refresh_overwrite``: exactly the records of the last run.
* ``full_refresh_append``: every run adds a copy of what it read, tagged with its run id.
* ``incremental_deduped_history``: a row per version of a key, tagged ``current`` on the
  key's current one. A record makes a version unless it is the key's current one
  again (same values); a hard delete ends the current version (no version is
  current then); a soft delete adds a version with the last values and the
  tombstone's time, current until the key is emitted again; a tombstone for a key
  not live leaves nothing. Its current versions are the ``incremental_deduped`` rows.
* ``deletes: none`` (and overwrite) ignores tombstones.

:data:`ADAPTERS` says how to get each warehouse; adding one is one entry. The
suite runs on DuckDB (DuckLake) and on Snowflake through fakesnow's server in
this process (``tests/snowflake_fixtures.py``); on real Snowflake too when
``MDSTACK_SNOWFLAKE_*`` configure it (adapter ``snowflake-real``).

Every sync commits to a real warehouse (about 0.1-0.3 s a commit), so the
property tests run few examples by default; ``MDSTACK_EXAMPLES_SCALE=10``
multiplies them for a deep run.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from connectors.base import SOURCE_DELETED_AT, Batch, Deletes, Message, Source
from stack.config import SourceConfig
from stack.config.targets import PostgresCatalog
from stack.load import (
    EVERY_CHECKPOINT,
    CommitPolicy,
    Progress,
    RunContext,
    ledger,
    plan_stream,
    sync_stream,
)
from stack.load.ledger import RunEntry
from stack.load.staged import Replacement
from stack.sql import ident, table
from stack.warehouse.base import Warehouse
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.snowflake_fixtures import open_for_contract, real_snowflake, real_unavailable

PIPELINE, SOURCE, STREAM, SCHEMA = "p", "src", "items", "raw"
POLICIES = {"every checkpoint": EVERY_CHECKPOINT, "coalesced": CommitPolicy()}
"""The two commit policies: a commit per checkpoint, and one commit at the end of a short run."""
Row = tuple[Any, ...]
"""(copy, id, name, updated_at, deleted-at in microseconds or None); copy is the run id
for ``full_refresh_append``, ``"current"`` for a key's current version in a history table,
and ``""`` otherwise."""
HISTORY = "incremental_deduped_history"


@dataclass(frozen=True)
class Adapter:
    """How the contract suite gets one kind of warehouse.

    Attributes:
        name: the adapter's name (the fixture's parameter, the crash worker's argument).
        open: an unopened warehouse stored at a location (a fresh folder).
        shared_location: another process can open the same warehouse from its location
            (needed to kill a sync process and check what it left behind).
    """

    name: str
    open: Callable[[Path], AbstractContextManager[Warehouse]]
    shared_location: bool


CATALOG_PORT = "MDSTACK_TEST_CATALOG_PORT"
"""The port of the PostgreSQL cluster holding the catalogs of ``duckdb-pg`` lakes (set by the
suite's ``adapter`` fixture; a worker process the suite starts inherits it)."""


def pg_catalog(path: Path, port: int) -> PostgresCatalog:
    """A catalog for a lake in ``path``: a schema (named after ``path``) of the PostgreSQL
    cluster on ``port``."""
    schema = "lake_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    return PostgresCatalog.model_validate(
        {
            "type": "postgres",
            "host": "127.0.0.1",
            "port": port,
            "database": "postgres",
            "user": "postgres",
            "schema": schema,
        }
    )


def open_pg_catalog(path: Path) -> DuckDBWarehouse:
    """A lake in ``path`` whose catalog is in the session's PostgreSQL cluster."""
    return DuckDBWarehouse(path, threads=1, catalog=pg_catalog(path, int(os.environ[CATALOG_PORT])))


ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        # One thread: the suite's tables are tiny; starting threads costs more than it saves.
        Adapter("duckdb", lambda path: DuckDBWarehouse(path, threads=1), shared_location=True),
        Adapter("duckdb-pg", open_pg_catalog, shared_location=True),
        # fakesnow's server lives in the test process: no other process can reach it.
        Adapter("snowflake", open_for_contract, shared_location=False),
    )
}
if not real_unavailable():
    ADAPTERS["snowflake-real"] = Adapter(
        "snowflake-real", lambda path: real_snowflake(), shared_location=False
    )


def merge_path_only(wh: Warehouse, mode: str) -> None:
    """Skip a case of another mode than ``incremental_deduped`` on a lake whose catalog is in
    PostgreSQL: the engine runs the same statements whatever holds a DuckLake's catalog, so
    the merge path covers what that catalog changes (where commits land)."""
    if getattr(wh, "pg", None) is not None and mode != "incremental_deduped":
        pytest.skip("a PostgreSQL catalog runs the merge path's cases only (see merge_path_only)")


def sync(
    wh: Warehouse,
    source: Source,
    *,
    mode: str,
    deletes: str,
    region: str,
    run_id: str,
    policy: CommitPolicy,
    progress: Progress | None = None,
    replace: Replacement | None = None,
    schema: str = SCHEMA,
    **stream: Any,
) -> RunEntry:
    """One run of the stream ``items`` of ``source`` into ``raw.items``, for ``region``.

    ``stream`` adds options of the stream's entry in ``stack.yml`` (``on_bad_record``);
    ``replace``: the rows the run replaces (a full refresh, a backfill partition);
    ``schema``: another table, ``<schema>.items`` (its state is still keyed by region alone).
    """
    config = SourceConfig.model_validate(
        {
            "connector": "scripted",
            "schema": schema,
            "streams": {STREAM: {"sync": mode, "deletes": deletes, **stream}},
        }
    )
    plan = plan_stream(SOURCE, config, source.discover(), STREAM)
    ctx = RunContext(PIPELINE, region, run_id)
    return sync_stream(wh, source, plan, ctx, progress=progress, policy=policy, replace=replace)


SCALE = int(os.environ.get("MDSTACK_EXAMPLES_SCALE", "1"))
"""How many times more random cases (examples, kills) than the default to try."""


def examples(count: int) -> settings:
    """Hypothesis settings of a contract test: ``count`` examples, times :data:`SCALE`.

    Examples share their test's warehouse (a function-scoped fixture), each in its own region.
    """
    return settings(
        max_examples=count * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- what landed ------------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1)


def _micros(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // timedelta(microseconds=1)


def table_rows(wh: Warehouse, region: str, mode: str, schema: str = SCHEMA) -> list[Row]:
    """The region's rows of ``<schema>.items``, in the shape of :func:`expected_rows`."""
    if wh.columns(schema, STREAM) is None:
        return []
    copy = (
        "CASE WHEN _mds_is_current THEN 'current' ELSE '' END" if mode == HISTORY else "_mds_run_id"
    )
    result = wh.query(
        f"SELECT {copy}, id, name, updated_at, _mds_deleted_at FROM {table(schema, STREAM)} "
        "WHERE _mds_region = ?",
        [region],
    )
    tagged = mode in ("full_refresh_append", HISTORY)
    rows = [
        (run if tagged else "", key, name, cursor, _micros(deleted))
        for run, key, name, cursor, deleted in (tuple(r.values()) for r in result.to_pylist())
    ]
    return sorted(rows, key=repr)


def check_history(wh: Warehouse, region: str, deletes: str, messages: Sequence[Message]) -> None:
    """A history table's times hold together, and its view of current versions holds the rows
    an ``incremental_deduped`` table of the same ``messages`` would.

    Per key: at most one version is current, the one without an end; every version ends no
    earlier than it starts, and none overlaps the next (so "as of" any time finds one).
    """
    result = wh.query(
        f"SELECT id, _mds_valid_from, _mds_valid_to, _mds_is_current FROM {table(SCHEMA, STREAM)} "
        "WHERE _mds_region = ? ORDER BY id, _mds_valid_from, _mds_valid_to NULLS LAST",
        [region],
    )
    versions: dict[int, list[tuple]] = {}
    for key, start, end, current in (tuple(r.values()) for r in result.to_pylist()):
        versions.setdefault(key, []).append((start, end, current))
    for key, kept in versions.items():
        assert sum(current for _, _, current in kept) <= 1, f"key {key}: two current versions"
        for start, end, current in kept:
            assert (end is None) == current, f"key {key}: {start}-{end} current={current}"
            assert end is None or start <= end, f"key {key} ends before it starts"
        for (_, end, _), (start, _, _) in itertools.pairwise(kept):
            assert end is not None and end <= start, f"key {key}: versions overlap"
    view = wh.query(
        f"SELECT '', id, name, updated_at, _mds_deleted_at "
        f"FROM {table(SCHEMA, STREAM + '_current')} "
        "WHERE _mds_region = ?",
        [region],
    )
    current = sorted(
        ((*r[:4], _micros(r[4])) for r in (tuple(r.values()) for r in view.to_pylist())),
        key=repr,
    )
    assert current == expected_rows("incremental_deduped", deletes, [("", messages)])


def elsewhere(wh: Warehouse, region: str) -> tuple[list[tuple], list[tuple]]:
    """Every row and state of the regions other than ``region``: a run must not touch them."""
    if wh.columns(SCHEMA, STREAM) is None:
        return [], []
    others = [region]
    data = wh.query(
        f"SELECT * FROM {table(SCHEMA, STREAM)} WHERE _mds_region <> ?",
        others,
    )
    states = wh.query(
        f"SELECT region, state FROM {table(wh.meta_schema, ledger.STATE_TABLE)} WHERE region <> ?",
        others,
    )
    return (
        sorted((tuple(r.values()) for r in data.to_pylist()), key=repr),
        sorted((tuple(r.values()) for r in states.to_pylist()), key=repr),
    )


def stored_state(wh: Warehouse, region: str) -> dict | None:
    """The region's committed state (``None`` before the first commit, even of any stream)."""
    if wh.columns(wh.meta_schema, ledger.STATE_TABLE) is None:
        return None
    return ledger.read_state(wh, ledger.StreamKey(PIPELINE, SOURCE, STREAM, region))


def run_ledger(wh: Warehouse, region: str) -> list[dict[str, Any]]:
    """The region's rows of the run ledger, oldest first."""
    result = wh.query(
        f"SELECT run_id, status, rows_read, inserted, deleted "
        f"FROM {table(wh.meta_schema, ledger.RUNS_TABLE)} "
        f"WHERE {ident('pipeline')} = ? AND {ident('region')} = ? ORDER BY started_at",
        [PIPELINE, region],
    )
    return result.to_pylist()


# -- the reference model ----------------------------------------------------------------------
def events(messages: Sequence[Message]) -> Iterator[tuple[str, int, str | None, int]]:
    """("record", id, name, cursor) and ("delete", id, None, time) in the order they happen.

    Inside one batch the order carries no meaning: the higher cursor is the later event.
    """
    for message in messages:
        if isinstance(message, Batch):
            data = message.data.to_pydict()
            for key, name, cursor in sorted(
                zip(data["id"], data["name"], data["updated_at"], strict=True),
                key=lambda r: r[2],
            ):
                yield "record", key, name, cursor
        elif isinstance(message, Deletes):
            data = message.keys.to_pydict()
            for key, at in zip(data["id"], data[SOURCE_DELETED_AT], strict=True):
                yield "delete", key, None, _micros(at)


def records_read(messages: Sequence[Message]) -> int:
    return sum(m.data.num_rows for m in messages if isinstance(m, Batch))


def _deduped(messages: Sequence[Message], deletes: str) -> list[Row]:
    rows: dict[int, list] = {}
    for kind, key, name, value in events(messages):
        if kind == "record":
            assert key not in rows or rows[key][1] <= value, "the model never sees a stale cursor"
            rows[key] = [name, value, None]
        elif deletes == "hard":
            rows.pop(key, None)
        elif deletes == "soft" and key in rows and rows[key][2] is None:
            rows[key][2] = value
    return [("", key, *row) for key, row in rows.items()]


def _history(messages: Sequence[Message], deletes: str) -> list[Row]:
    versions: dict[int, list[list]] = {}
    live: dict[int, bool] = {}
    """Keys not absent: live (True) or soft-deleted (False)."""
    for kind, key, name, value in events(messages):
        kept = versions.setdefault(key, [])
        if kind == "record":
            if not (live.get(key) and kept[-1][:2] == [name, value]):
                kept.append([name, value, None])
                live[key] = True
        elif deletes != "none" and live.get(key):
            if deletes == "hard":
                del live[key]
            else:
                kept.append([*kept[-1][:2], value])
                live[key] = False
    return [
        ("current" if key in live and i == len(kept) - 1 else "", key, *version)
        for key, kept in versions.items()
        for i, version in enumerate(kept)
    ]


def _appended(messages: Sequence[Message], deletes: str) -> list[Row]:
    rows: list[list] = []
    for kind, key, name, value in events(messages):
        if kind == "record":
            rows.append([key, name, value, None])
        elif deletes == "hard":
            rows = [r for r in rows if r[0] != key]
        elif deletes == "soft":
            for row in rows:
                if row[0] == key and row[3] is None:
                    row[3] = value
    return [("", *row) for row in rows]


def expected_rows(
    mode: str, deletes: str, runs: Sequence[tuple[str, Sequence[Message]]]
) -> list[Row]:
    """What a region's table must hold after ``runs``: (run id, messages it committed).

    For incremental modes only the concatenation of the messages matters (how the
    read was split into runs and commits must not); full refreshes read everything
    each run.
    """
    if mode == "incremental_deduped":
        rows = _deduped([m for _, messages in runs for m in messages], deletes)
    elif mode == HISTORY:
        rows = _history([m for _, messages in runs for m in messages], deletes)
    elif mode == "incremental_append":
        rows = _appended([m for _, messages in runs for m in messages], deletes)
    else:
        copies = runs[-1:] if mode == "full_refresh_overwrite" else runs
        rows = [
            (run_id if mode == "full_refresh_append" else "", key, name, value, None)
            for run_id, messages in copies
            for kind, key, name, value in events(messages)
            if kind == "record"
        ]
    return sorted(rows, key=repr)
