"""``incremental_deduped_history``: every version of every row, kept as it happened (SCD type 2).

A history table holds one row per version of a key, with the stream's columns and
``_mds_valid_from`` / ``_mds_valid_to`` (the time the version was current; ``_mds_valid_to``
NULL while it still is) and ``_mds_is_current``. A view ``<table>_current`` shows the current
versions, the rows an ``incremental_deduped`` table of the same stream holds.

Each commit turns what it staged into versions, in order, per key: the key's current version
(from the table), then the staged events, ordered as the engine orders them everywhere (the
batch, then the cursor, then the row's place in its batch: a CDC source's order of
changes). Every event leaves the key in a state: *live* with values (a record), *deleted*
with the last values (a soft delete) or *absent* (a hard delete). An event that leaves the
state as it was (the same record read again, a delete of a key already gone) makes no version;
every other one ends the version before it and, unless it leaves the key absent, starts one.

A version is valid from the source's time for the change: the commit time a CDC source sends
(:attr:`connectors.base.Batch.changed_at`), else the cursor where it is a date or time, else
the run's load time; a tombstone's from its deletion time. Times never go back within a key
(a version never ends before it starts): a time earlier than the version before it is taken
as that one's.

All of it is computed outside the transaction, in one query, into a staging table; the
commit's transaction then closes the versions it ends and inserts the new ones, with the
state: a crash leaves the table as the last commit left it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from connectors.base import SOURCE_DELETED_AT
from stack import sql
from stack.errors import ConfigError
from stack.load.ledger import RunEntry
from stack.load.plan import RunContext, StreamPlan
from stack.load.staged import LoadContext, StagedLoad, check_stale
from stack.sql import (
    CHANGED_AT,
    DELETED_AT,
    IS_CURRENT,
    LOADED_AT,
    POS,
    REGION,
    RUN_ID,
    SEQ,
    VALID_FROM,
    VALID_TO,
    ident,
)
from stack.warehouse.base import Warehouse

TIME = pa.timestamp("us")
"""The type of every time a history table keeps (naive UTC, as every ``_mds_*`` time)."""
COLUMNS = pa.schema([(VALID_FROM, TIME), (VALID_TO, TIME), (IS_CURRENT, pa.bool_())])
"""The columns a history table has besides the stream's and the metadata every table has."""

# Events, in the staging table of versions: the key's current version in the table (its
# state live or deleted), a staged record, a staged tombstone, and the end of the key's
# last ended version: versions start no earlier (it matters after a hard delete; a current
# version starts no earlier than it anyway).
_CURRENT, _RECORD, _DELETE, _CURRENT_DELETED, _ENDED = 0, 1, 2, 3, 4
_LIVE, _DELETED, _ABSENT = "'L'", "'D'", "'A'"


def _names(columns: Sequence[str], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{ident(c)}" for c in columns)


def _differs(columns: Sequence[str], window: str) -> str:
    """Whether a row's ``columns`` (SQL expressions) differ from the row before it."""
    found = [f"lag({c}) OVER ({window}) IS DISTINCT FROM {c}" for c in columns]
    return " OR ".join(found) or "FALSE"


def view_columns(columns: Sequence[str]) -> list[str]:
    """The columns of the view of current versions: the stream's and the metadata columns,
    ``_mds_valid_from`` too (since when the row is as it is)."""
    return [*columns, *sql.META_COLUMNS, VALID_FROM]


def current_view_sql(plan: StreamPlan, columns: Sequence[str]) -> str:
    """``CREATE OR REPLACE VIEW`` of the current versions (:func:`view_columns`)."""
    names = _names(view_columns(columns))
    return (
        f"CREATE OR REPLACE VIEW {sql.table(plan.schema, plan.current_view)} AS "
        f"SELECT {names} FROM {plan.target} WHERE {ident(IS_CURRENT)}"
    )


CursorTime = Literal["naive", "zoned"] | None
"""What a stream's cursor says of time: a date or naive UTC time, a time with its zone, or
nothing (not a date or time)."""


def cursor_start(cursor: str, kind: CursorTime, alias: str = "s") -> str | None:
    """The cursor as a naive UTC time (a zoned one converted, whatever the session's zone)."""
    column = f"{alias}.{ident(cursor)}" if alias else ident(cursor)
    if kind == "zoned":
        return f"CAST({column} AT TIME ZONE 'UTC' AS TIMESTAMP)"
    return f"CAST({column} AS TIMESTAMP)" if kind == "naive" else None


def row_time(columns: Sequence[str], cursor: str | None, kind: CursorTime) -> str:
    """When a staged record (alias ``s``) became valid; the last parameter: load time."""
    times = [f"s.{ident(CHANGED_AT)}"] if CHANGED_AT in columns else []
    start = cursor_start(cursor, kind) if cursor else None
    if start:
        times.append(start)
    return f"coalesce({', '.join([*times, '?::TIMESTAMP'])})"


def versions_sql(
    target: str,
    keys: Sequence[str],
    columns: Sequence[str],
    rows: str | None,
    deletes: str | None,
    *,
    cursor: str | None,
    time: str | None,
    soft: bool,
) -> str:
    """SELECT of the versions a commit writes and the current versions it ends.

    ``rows``: staged records (``columns``, ``_mds_seq``, ``_mds_pos``), valid from ``time``
    (:func:`row_time`); ``deletes``: tombstones (keys, ``_deleted_at``, ``_mds_seq``).
    Columns are named ``_c0``, ``_c1``... after ``columns`` (no name of the stream's can
    collide with the query's own), then ``_d`` (a tombstone's time), ``_kind`` (the event),
    ``_state`` and ``_prev`` (the key's state after and before it), ``_from`` and ``_to``.
    Parameters: load time (with ``rows``), load time twice (with ``deletes``: for a tombstone
    without a time), region, region.
    """
    alias = {c: f"_c{i}" for i, c in enumerate(columns)}
    key = ", ".join(alias[k] for k in keys)
    order = "_seq, _oc NULLS FIRST, _pos" if cursor else "_seq, _pos"
    window = f"PARTITION BY {key} ORDER BY {order}"
    running = f"{window} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"
    oc = (lambda a: f"{a}.{ident(cursor)}") if cursor else (lambda a: "NULL")
    events = []
    if rows:
        assert time is not None, "records need the time they became valid"
        values = ", ".join(f"s.{ident(c)} AS {alias[c]}" for c in columns)
        events.append(
            f"SELECT {values}, NULL::TIMESTAMP AS _d, s.{ident(SEQ)} AS _seq, "
            f"s.{ident(POS)} AS _pos, {oc('s')} AS _oc, {time} AS _at, {_RECORD} AS _kind "
            f"FROM {rows} AS s"
        )
    if deletes:
        values = ", ".join(
            f"d.{ident(c)} AS {alias[c]}" if c in keys else f"NULL AS {alias[c]}" for c in columns
        )
        gone = f"coalesce(d.{ident(SOURCE_DELETED_AT)}, ?::TIMESTAMP)"
        events.append(
            f"SELECT {values}, {gone} AS _d, d.{ident(SEQ)} AS _seq, 0 AS _pos, NULL AS _oc, "
            f"{gone} AS _at, {_DELETE} AS _kind FROM {deletes} AS d"
        )
    touched = " UNION ALL ".join(f"SELECT {_names(keys)} FROM {r}" for r in (rows, deletes) if r)
    values = ", ".join(f"t.{ident(c)} AS {alias[c]}" for c in columns)
    events.append(
        f"SELECT {values}, t.{ident(DELETED_AT)} AS _d, -1 AS _seq, 0 AS _pos, {oc('t')} AS _oc, "
        f"t.{ident(VALID_FROM)} AS _at, CASE WHEN t.{ident(DELETED_AT)} IS NULL "
        f"THEN {_CURRENT} ELSE {_CURRENT_DELETED} END AS _kind FROM {target} AS t "
        f"WHERE t.{ident(REGION)} = ? AND t.{ident(IS_CURRENT)} "
        f"AND ({_names(keys, 't.')}) IN ({touched})"
    )
    nulls = ", ".join(
        f"t.{ident(c)} AS {alias[c]}" if c in keys else f"NULL AS {alias[c]}" for c in columns
    )
    events.append(
        f"SELECT {nulls}, NULL AS _d, -2 AS _seq, 0 AS _pos, NULL AS _oc, "
        f"max(t.{ident(VALID_TO)}) AS _at, {_ENDED} AS _kind FROM {target} AS t "
        f"WHERE t.{ident(REGION)} = ? AND NOT t.{ident(IS_CURRENT)} "
        f"AND ({_names(keys, 't.')}) IN ({touched}) "
        f"GROUP BY {_names(keys, 't.')}"
    )
    others = [alias[c] for c in columns if c not in keys]
    # A tombstone takes the values of the last record or current version before it: the
    # events since that one form a group. Without tombstones each event is its own.
    state = (
        f"CASE WHEN _kind IN ({_CURRENT}, {_RECORD}) THEN {_LIVE} "
        f"WHEN _kind = {_CURRENT_DELETED} THEN {_DELETED} WHEN _kind = {_ENDED} THEN {_ABSENT}"
    )
    if deletes:
        deleted = _DELETED if soft else _ABSENT
        state += f" WHEN _grp > 0 THEN {deleted} ELSE {_ABSENT} END"
        group = f"PARTITION BY {key}, _grp ORDER BY {order}"
        values = ", ".join(
            [
                *(alias[k] for k in keys),
                *(f"first_value({c}) OVER ({group}) AS {c}" for c in others),
            ]
        )
        grouped = (
            f"g AS (SELECT *, count(CASE WHEN _kind NOT IN ({_DELETE}, {_ENDED}) THEN 1 END) "
            f"OVER ({running}) "
            f"AS _grp FROM e), "
            f"f AS (SELECT {values}, _d, _seq, _pos, _oc, _at, _kind, {state} AS _state FROM g), "
        )
    else:
        grouped = f"f AS (SELECT *, {state} END AS _state FROM e), "
    changed = f"_state <> _prev OR (_state <> {_ABSENT} AND _differs)"
    return (
        f"WITH e AS ({' UNION ALL '.join(events)}), "
        f"{grouped}"
        f"m AS (SELECT *, coalesce(lag(_state) OVER ({window}), {_ABSENT}) AS _prev, "
        f"{_differs(others, window)} AS _differs FROM f), "
        f"kept AS (SELECT * FROM m WHERE _kind IN ({_CURRENT}, {_CURRENT_DELETED}, {_ENDED}) "
        f"OR {changed}), "
        f"timed AS (SELECT *, max(_at) OVER ({running}) AS _from FROM kept), "
        f"v AS (SELECT *, lead(_from) OVER ({window}) AS _to FROM timed) "
        f"SELECT {', '.join(alias[c] for c in columns)}, _d, _kind, _state, _prev, _from, _to "
        f"FROM v WHERE _kind IN ({_RECORD}, {_DELETE}) OR _to IS NOT NULL"
    )


def first_versions_sql(target: str, rows: str, columns: Sequence[str], time: str) -> str:
    """INSERT of the region's first records, when no key comes twice: each is its key's
    one version, current. Parameters: region, run id, load time, then ``time``'s."""
    names = [*columns, REGION, RUN_ID, LOADED_AT, DELETED_AT, VALID_FROM, VALID_TO, IS_CURRENT]
    return (
        f"INSERT INTO {target} ({_names(names)}) SELECT {_names(columns, 's.')}, ?::VARCHAR, "
        f"?::VARCHAR, ?::TIMESTAMP, NULL::TIMESTAMP, {time}, NULL::TIMESTAMP, TRUE "
        f"FROM {rows} AS s"
    )


def repeats_sql(rows: str, keys: Sequence[str]) -> str:
    """A row if some key comes twice in the staged records, else none."""
    return f"SELECT 1 FROM {rows} GROUP BY {_names(keys)} HAVING count(*) > 1 LIMIT 1"


def close_sql(target: str, versions: str, keys: Sequence[str], columns: Sequence[str]) -> str:
    """End the current versions the commit supersedes. Parameters: region."""
    alias = {c: f"_c{i}" for i, c in enumerate(columns)}
    match = " AND ".join(f"t.{ident(k)} = v.{alias[k]}" for k in keys)
    return (
        f"UPDATE {target} AS t SET {ident(VALID_TO)} = v._to, {ident(IS_CURRENT)} = FALSE "
        f"FROM {versions} AS v WHERE v._kind IN ({_CURRENT}, {_CURRENT_DELETED}) AND {match} "
        f"AND t.{ident(REGION)} = ? AND t.{ident(IS_CURRENT)}"
    )


def insert_sql(target: str, versions: str, columns: Sequence[str]) -> str:
    """Write the commit's new versions. Parameters: region, run id, load time."""
    alias = [f"_c{i}" for i in range(len(columns))]
    names = [*columns, REGION, RUN_ID, LOADED_AT, DELETED_AT, VALID_FROM, VALID_TO, IS_CURRENT]
    return (
        f"INSERT INTO {target} ({_names(names)}) SELECT {', '.join(alias)}, ?::VARCHAR, "
        f"?::VARCHAR, ?::TIMESTAMP, CASE WHEN _state = {_DELETED} THEN _d END, _from, _to, "
        f"_to IS NULL FROM {versions} WHERE _kind IN ({_RECORD}, {_DELETE}) "
        f"AND _state <> {_ABSENT}"
    )


def counts_sql(versions: str) -> str:
    """The commit's (inserted, updated, deleted): keys that became live, new versions of
    live or deleted keys, and keys deleted."""
    events = f"_kind IN ({_RECORD}, {_DELETE})"
    return (
        f"SELECT coalesce(sum(CASE WHEN {events} AND _state = {_LIVE} AND _prev = {_ABSENT} "
        f"THEN 1 ELSE 0 END), 0), "
        f"coalesce(sum(CASE WHEN {events} AND _state = {_LIVE} AND _prev <> {_ABSENT} "
        f"THEN 1 ELSE 0 END), 0), "
        f"coalesce(sum(CASE WHEN {events} AND _state <> {_LIVE} AND _prev = {_LIVE} "
        f"THEN 1 ELSE 0 END), 0) FROM {versions}"
    )


def stale_sql(target: str, keys: Sequence[str], cursor: str, replaced: str = "FALSE") -> str:
    """WHERE clause (on staged records ``s``) of records older than their key's current
    version, but for versions the commit replaces (``replaced``, a condition on ``t``: a
    backfill's window). Parameters: region, then ``replaced``'s."""
    match = " AND ".join(f"t.{ident(k)} = s.{ident(k)}" for k in keys)
    return (
        f"EXISTS (SELECT 1 FROM {target} AS t WHERE t.{ident(REGION)} = ? "
        f"AND t.{ident(IS_CURRENT)} AND {match} AND t.{ident(cursor)} > s.{ident(cursor)} "
        f"AND NOT ({replaced}))"
    )


def gone_sql(target: str, rows: str | None, keys: Sequence[str], window: str) -> str:
    """SELECT, as tombstones, of the live keys of the region (within ``window``, a condition
    on ``t``) that the staged records lack: what a full read no longer has.
    Parameters: load time, region, then the window's."""
    lacking = ""
    if rows:
        match = " AND ".join(f"s.{ident(k)} = t.{ident(k)}" for k in keys)
        lacking = f" AND NOT EXISTS (SELECT 1 FROM {rows} AS s WHERE {match})"
    return (
        f"SELECT {_names(keys, 't.')}, ?::TIMESTAMP AS {ident(SOURCE_DELETED_AT)}, "
        f"0 AS {ident(SEQ)} FROM {target} AS t WHERE t.{ident(REGION)} = ? "
        f"AND t.{ident(IS_CURRENT)} AND t.{ident(DELETED_AT)} IS NULL AND {window}{lacking}"
    )


def adopt(wh: Warehouse, plan: StreamPlan, kind: CursorTime, add_columns: bool) -> None:
    """Make the table a history table: each row its key's current version (a table loaded
    until now without history keeps its rows), valid from its cursor (a date or time) or
    else its load time. Rows already versions are left as they are.

    Raises:
        ConfigError: the table holds several rows of a key (appended): which one would be
            current is not known.
    """
    if add_columns:
        twice = f"SELECT 1 FROM {plan.target} GROUP BY {_names([REGION, *plan.keys])} "
        if wh.query(twice + "HAVING count(*) > 1 LIMIT 1").num_rows:
            raise ConfigError(
                f"{plan.target} holds several rows of one key: it cannot start a history "
                "with one current version per key",
                key=f"sources.{plan.source}.streams.{plan.name}.sync",
                hint="load the history into another schema (a source of its own), or keep "
                "this stream's mode",
            )
        wh.add_columns(plan.schema, plan.name, COLUMNS)
    cursor = plan.stream.cursor
    start = ident(LOADED_AT)
    from_cursor = cursor_start(cursor, kind, alias="") if cursor else None
    if from_cursor:
        start = f"coalesce({from_cursor}, {start})"
    with wh.transaction():
        wh.execute(
            f"UPDATE {plan.target} SET {ident(VALID_FROM)} = {start}, "
            f"{ident(IS_CURRENT)} = TRUE WHERE {ident(IS_CURRENT)} IS NULL"
        )


def data_columns(wh: Warehouse, plan: StreamPlan) -> list[str]:
    """The stream's columns in its history table (all but mdstack's own)."""
    found = wh.columns(plan.schema, plan.name) or {}
    engine = (*sql.META_COLUMNS, *sql.HISTORY_COLUMNS)
    return [c for c in found if c not in engine]


@dataclass
class Versions:
    """A commit's versions, computed into a staging table (:func:`versions_sql`)."""

    table: str
    columns: list[str]
    inserted: int
    updated: int
    deleted: int

    def write(self, wh: Warehouse, plan: StreamPlan, ctx: RunContext, entry: RunEntry) -> None:
        """End the versions superseded and insert the new ones; call inside the transaction."""
        ref = wh.stage_ref(self.table)
        wh.execute(close_sql(plan.target, ref, plan.keys, self.columns), [ctx.region])
        wh.execute(
            insert_sql(plan.target, ref, self.columns), [ctx.region, ctx.run_id, ctx.loaded_at]
        )
        entry.inserted += self.inserted
        entry.updated += self.updated
        entry.deleted += self.deleted


def stage_versions(
    wh: Warehouse,
    plan: StreamPlan,
    ctx: RunContext,
    columns: list[str],
    rows: str | None,
    deletes: str | None,
    time: str | None = None,
) -> Versions:
    """Compute the versions ``rows`` (valid from ``time``: :func:`row_time`) and ``deletes``
    make, outside the transaction that writes them."""
    name = f"_mds_versions_{plan.name}"
    select = versions_sql(
        plan.target,
        plan.keys,
        columns,
        rows,
        deletes,
        cursor=plan.stream.cursor,
        time=time,
        soft=plan.soft,
    )
    times = [ctx.loaded_at] * ((1 if rows else 0) + (2 if deletes else 0))
    params = [*times, ctx.region, ctx.region]
    wh.execute(f"CREATE OR REPLACE TEMP TABLE {ident(name)} AS {select}", params)
    counts = wh.query(counts_sql(wh.stage_ref(name))).to_pylist()[0].values()
    inserted, updated, deleted = (int(n) for n in counts)
    return Versions(name, columns, inserted, updated, deleted)


class HistoryLoad(StagedLoad):
    """Stage records and tombstones; each commit writes them as versions (module docstring)."""

    def __init__(
        self, lc: LoadContext, cursor_time: CursorTime, region_filled: bool | None = None
    ) -> None:
        # Rows are numbered: a key's versions in one batch keep their order.
        super().__init__(lc, region_filled, positions=True)
        self.cursor_time = cursor_time
        """Whether, and how, a record's version is valid from its cursor."""

    def migrate(self, schema: pa.Schema) -> None:
        if CHANGED_AT in self.records.columns:  # the source's change times stay staged
            schema = schema.append(pa.field(CHANGED_AT, pa.timestamp("us")))
        self.records.migrate(schema)

    def _prepare(self) -> tuple[Callable[[], None], list[str]]:
        wh, plan, ctx, entry = self.lc.wh, self.lc.plan, self.lc.ctx, self.lc.entry
        replace = self.lc.replace
        rows, deletes = self.records.ref, self.deletes.ref
        cursor, made = plan.stream.cursor, []
        whole = replace is not None and replace.whole  # a full read: the source's truth now
        if rows and cursor and not whole and self._filled(wh, plan.target, ctx.region):
            replaced, params = ("FALSE", []) if replace is None else replace.window()
            where = stale_sql(plan.target, plan.keys, cursor, replaced)
            check_stale(wh, plan, self, rows, where, [ctx.region, *params])
        if replace is not None:
            # What the read no longer has is deleted, not cleared; its tombstones replay
            # history the rows outside a backfill's window already hold (as in every mode).
            window, params = replace.window()
            select = gone_sql(plan.target, rows, plan.keys, window)
            gone = f"_mds_gone_{plan.name}"
            wh.execute(
                f"CREATE OR REPLACE TEMP TABLE {ident(gone)} AS {select}",
                [ctx.loaded_at, ctx.region, *params],
            )
            deletes, made = wh.stage_ref(gone), [gone]
        if not (rows or deletes):  # a commit of the state alone
            return lambda: None, made
        staged = self.records.columns
        columns = [c for c in staged if c != CHANGED_AT] if rows else data_columns(wh, plan)
        time = row_time(staged, cursor, self.cursor_time)
        if rows and not deletes and self._first(rows):
            return partial(self._insert_first, rows, columns, time), made
        versions = stage_versions(wh, plan, ctx, columns, rows, deletes, time)
        return partial(versions.write, wh, plan, ctx, entry), [*made, versions.table]

    def _first(self, rows: str) -> bool:
        """The region's first records, no key twice: each one version, nothing to order."""
        wh, plan = self.lc.wh, self.lc.plan
        if self._filled(wh, plan.target, self.lc.ctx.region):
            return False
        return not wh.query(repeats_sql(rows, plan.keys)).num_rows

    def _insert_first(self, rows: str, columns: list[str], time: str) -> None:
        wh, plan, ctx = self.lc.wh, self.lc.plan, self.lc.ctx
        params = [ctx.region, ctx.run_id, ctx.loaded_at, ctx.loaded_at]
        wh.execute(first_versions_sql(plan.target, rows, columns, time), params)
        self.lc.entry.inserted += self.records.rows


@dataclass(frozen=True)
class FirstLoad:
    """A history stream's first load of an empty region, streamed straight into its table as
    a deduped stream's is (:func:`~stack.load.streaming.first_load_direct`): each record goes
    in as a current version, valid from its time; at the commit, the rows of a key that came
    more than once are made into its versions, in order (the cursor, then the order they
    were written in), a row equal to the one before it dropped."""

    plan: StreamPlan
    cursor_time: CursorTime
    loaded_at: datetime

    def add_columns(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` with its versions' columns; its change times (if any) taken out."""
        rows, starts = batch.num_rows, []
        if CHANGED_AT in batch.schema.names:
            starts.append(batch.column(CHANGED_AT))
            batch = batch.drop_columns([CHANGED_AT])
        cursor = self.plan.stream.cursor
        if cursor and self.cursor_time:
            starts.append(batch.column(cursor).cast(TIME))  # a zoned time: its UTC instant
        start = pc.coalesce(*starts, pa.scalar(self.loaded_at, TIME))
        current = pa.repeat(pa.scalar(True), rows)
        return pa.RecordBatch.from_arrays(
            [*batch.columns, start, pa.nulls(rows, TIME), current],
            names=[*batch.schema.names, VALID_FROM, VALID_TO, IS_CURRENT],
        )

    def settle(self, wh: Warehouse, region: str, entry: RunEntry) -> None:
        """Make the rows of keys written more than once into versions; call in the load's
        transaction. Those rows are read into a staging table as versions, then replaced by
        them (no row is updated by its ``rowid``: DuckLake may give an updated row of an
        open transaction another one at the commit)."""
        plan = self.plan
        if not wh.query(sql.has_duplicate_keys(plan.target, plan.keys), [region]).num_rows:
            return
        found = list(wh.columns(plan.schema, plan.name) or {})
        others = [
            c for c in found if c not in (*plan.keys, *sql.META_COLUMNS, *sql.HISTORY_COLUMNS)
        ]
        name, cursor = f"_mds_first_{plan.name}", plan.stream.cursor
        assert cursor is not None, "first_load_direct() needs a cursor"
        select = _first_versions_sql(plan.target, plan.keys, cursor, others, found)
        wh.execute(f"CREATE OR REPLACE TEMP TABLE {ident(name)} AS {select}", [region, region])
        try:
            ref, keys = wh.stage_ref(name), _names(plan.keys)
            wh.execute(
                f"DELETE FROM {plan.target} WHERE {ident(REGION)} = ? "
                f"AND ({keys}) IN (SELECT {keys} FROM {ref})",
                [region],
            )
            wh.execute(
                f"INSERT INTO {plan.target} ({_names(found)}) SELECT {_names(found)} FROM {ref}"
            )
        finally:
            wh.drop_stage(name)
        rows = f"SELECT {_names(plan.keys)} FROM {plan.target} WHERE {ident(REGION)} = ?"
        counted = wh.query(
            f"SELECT (SELECT count(*) FROM ({rows})) AS n, "
            f"(SELECT count(*) FROM (SELECT DISTINCT * FROM ({rows}))) AS k",
            [region, region],
        ).to_pylist()[0]
        entry.inserted, entry.updated = counted["k"], counted["n"] - counted["k"]


def _first_versions_sql(
    target: str, keys: Sequence[str], cursor: str, others: list[str], columns: list[str]
) -> str:
    """SELECT of the versions the region's rows of keys written more than once make: in the
    order of the cursor, then of writing (``rowid``, read once, as ``_mds_pos``); a row
    equal to the one before it dropped; each valid until the next starts, never before it
    started itself. Parameters: region, region."""
    window = f"PARTITION BY {_names(keys)} ORDER BY {ident(cursor)} NULLS FIRST, {ident(POS)}"
    running = f"{window} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"
    twice = (
        f"SELECT {_names(keys)} FROM {target} WHERE {ident(REGION)} = ? "
        f"GROUP BY {_names(keys)} HAVING count(*) > 1"
    )
    numbered = (
        f"SELECT *, rowid AS {ident(POS)} FROM {target} WHERE {ident(REGION)} = ? "
        f"AND ({_names(keys)}) IN ({twice})"
    )
    first = f"row_number() OVER ({window}) = 1"
    differs = _differs([ident(c) for c in others], window)
    changed = f"SELECT * FROM ({numbered}) QUALIFY {first} OR {differs}"
    start = f"max({ident(VALID_FROM)}) OVER ({running})"
    started = f"SELECT * REPLACE ({start} AS {ident(VALID_FROM)}) FROM ({changed})"
    end = f"lead({ident(VALID_FROM)}) OVER ({window})"
    values = {VALID_TO: end, IS_CURRENT: f"{end} IS NULL"}
    chosen = ", ".join(f"{values.get(c, ident(c))} AS {ident(c)}" for c in columns)
    return f"SELECT {chosen} FROM ({started})"


def detect_deletes(
    wh: Warehouse, plan: StreamPlan, keys: str, ctx: RunContext, entry: RunEntry
) -> None:
    """End the current versions of the keys the source no longer has (``keys``: its whole key
    set): hard, or with a deleted version (soft); with a ``delete_window``, only of rows
    whose cursor falls in it."""
    window, params = "TRUE", []
    if plan.delete_window and plan.stream.cursor:
        window, params = f"t.{ident(plan.stream.cursor)} >= ?", [ctx.loaded_at - plan.delete_window]
    gone = f"_mds_gone_{plan.name}"
    select = gone_sql(plan.target, keys, plan.keys, window)
    wh.execute(
        f"CREATE OR REPLACE TEMP TABLE {ident(gone)} AS {select}",
        [ctx.loaded_at, ctx.region, *params],
    )
    versions = None
    try:
        if wh.query(f"SELECT 1 FROM {wh.stage_ref(gone)} LIMIT 1").num_rows:
            columns = data_columns(wh, plan)
            versions = stage_versions(wh, plan, ctx, columns, None, wh.stage_ref(gone))
            with wh.transaction():
                versions.write(wh, plan, ctx, entry)
    finally:
        wh.drop_stage(gone)
        if versions is not None:
            wh.drop_stage(versions.table)
