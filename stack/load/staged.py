"""Committing what a stream has staged: one transaction per commit, per sync mode.

A commit prepares its rows and deletes as staging tables (outside the
transaction: DuckDB writes one database per transaction), then in **one**
transaction: clears the region (overwrite) or the window a :class:`Replacement`
names (a backfill partition), applies deletes to the rows committed before,
writes the new rows, moves quarantined records, stores the state and the
ledger row. Either all of it lands or none of it: nothing is destroyed before
what replaces it is ready.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa

from connectors.base import SOURCE_DELETED_AT, State
from stack import sql
from stack.errors import SchemaError, WriteConflict
from stack.load import ledger
from stack.load.plan import RunContext, StreamPlan, utcnow
from stack.load.staging import Stage
from stack.warehouse.base import Warehouse

log = logging.getLogger(__name__)

STALE = "cursor went backwards: older than the row already loaded"
COMMIT_ATTEMPTS = 20
"""Times a commit that lost a race with another writer's (a warehouse several processes
write at once) is run again, from what is still staged, before the run fails as busy."""


@dataclass
class LoadContext:
    """What a load of one stream needs to know, shared by both ways of loading."""

    wh: Warehouse
    plan: StreamPlan
    ctx: RunContext
    key: ledger.StreamKey
    entry: ledger.RunEntry
    record: Callable[[], None]
    """Writes the stream's ledger row (inside the commit's transaction)."""
    replace: Replacement | None = None
    """Rows the load replaces as a whole (a backfill partition); the load commits once."""

    def end_checkpoint(self, state: State | None, now: datetime) -> None:
        """Close a commit, inside its transaction: the pending state, the checkpoint count,
        the stream's ledger row and a replacement's own closing step."""
        if state is not None:
            ledger.write_state(self.wh, self.key, state, self.ctx.run_id, now)
        elif self.replace is not None and self.replace.whole:
            ledger.reset_state(self.wh, self.key)  # the old state no longer covers the rows
        self.entry.checkpoints += 1
        self.record()
        if self.replace is not None:
            self.replace.settle(self.entry)


@dataclass
class Replacement:
    """Rows of the region replaced by a load's rows: those whose ``column`` lies in
    ``[low, high)`` (a backfill partition), or with no ``column`` every row of the
    region (a full refresh).

    They are deleted inside the transaction that writes their replacement, never
    before: a load that fails (the source, a bad record, a kill) leaves them as they
    were, and readers see the old rows or the new ones, never neither.

    Replacing every row, the load reads from scratch: a read resumed from the stored
    state would bring only what changed since, and the rest would be lost. The state
    stored after it is the read's own (none if the read checkpointed nothing).
    """

    column: str | None = None
    low: Any = None
    high: Any = None
    settle: Callable[[ledger.RunEntry], None] = field(default=lambda entry: None)
    """Runs last in the replacing transaction, with the load's counts (a backfill writes
    its ledger row there)."""
    replaced: int = 0
    """How many rows were deleted (set by :meth:`clear`)."""
    prior: State | None = None
    """The stream's state when the load began (set by the engine, under the stream's lock)."""

    @property
    def whole(self) -> bool:
        """Every row of the region is replaced (a full refresh)."""
        return self.column is None

    def window(self, alias: str = "t") -> tuple[str, list[Any]]:
        """The condition (on ``alias``) the replaced rows meet, and its parameters."""
        if self.column is None:
            return "TRUE", []
        return sql.in_window(self.column, alias), [self.low, self.high]

    def clear(self, wh: Warehouse, target: str, region: str) -> None:
        """Delete the replaced rows of ``region``; call inside the replacing transaction."""
        inside, params = self.window()
        where = f"t.{sql.ident(sql.REGION)} = ? AND {inside}"
        self.replaced = _count(
            wh, f"SELECT count(*) FROM {target} AS t WHERE {where}", [region, *params]
        )
        if self.replaced:
            wh.execute(f"DELETE FROM {target} AS t WHERE {where}", [region, *params])


class Load(Protocol):
    """Receives a stream's records between commits; ``commit`` makes them and the state land."""

    state: State | None

    @property
    def rows(self) -> int: ...

    def add(self, batch: pa.RecordBatch) -> None: ...

    def migrate(self, schema: pa.Schema) -> None: ...

    def add_deletes(self, keys: pa.RecordBatch) -> None: ...

    def add_bad(self, records: pa.RecordBatch) -> None: ...

    def commit(self) -> None: ...

    def close(self) -> None: ...


class StagedLoad:
    """Stage records, deletes and bad records; apply them with the state in one transaction.

    Used where rows must be merged or deleted (deduped streams, deletes), and for every
    load on a warehouse whose DDL commits the open transaction (a column added mid-load
    must not commit half of it).
    """

    def __init__(
        self, lc: LoadContext, region_filled: bool | None = None, *, positions: bool = False
    ) -> None:
        self.lc = lc
        name = lc.plan.name
        self.records = Stage(lc.wh, f"_mds_stage_{name}", positions=positions)
        self.deletes = Stage(lc.wh, f"_mds_deletes_{name}")
        self.bad = Stage(lc.wh, f"_mds_bad_{name}")
        self.state: State | None = None
        self._seq = 0
        self._region_filled = region_filled
        """Whether the region holds rows: looked up once, then known (under the stream's
        lock only this load writes the region)."""

    @property
    def rows(self) -> int:
        return self.records.rows + self.deletes.rows + self.bad.rows

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def add(self, batch: pa.RecordBatch) -> None:
        self.records.add(batch, self._next())

    def migrate(self, schema: pa.Schema) -> None:
        self.records.migrate(schema)

    def add_deletes(self, keys: pa.RecordBatch) -> None:
        self.deletes.add(keys, self._next())

    def add_bad(self, records: pa.RecordBatch) -> None:
        self.bad.add(records, self._next())

    def close(self) -> None:
        for stage in (self.records, self.deletes, self.bad):
            stage.reset()
        self.state = None

    def commit(self) -> None:
        """Apply what is staged and store the pending state, atomically; then empty the stage."""
        wh, plan, ctx, entry = self.lc.wh, self.lc.plan, self.lc.ctx, self.lc.entry
        for stage in (self.records, self.deletes):
            stage.flush()
        write, made = self._prepare()
        self.bad.flush()
        replace = self.lc.replace
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            counts, replaced = dataclasses.replace(entry), replace and replace.replaced
            try:
                self._apply(write)
                break
            except WriteConflict as exc:  # rolled back: what it counted is undone too
                entry.__dict__.update(counts.__dict__)
                if replace is not None:
                    replace.replaced = replaced or 0
                if attempt == COMMIT_ATTEMPTS:
                    raise
                log.info("%s [%s]: %s; committing again", plan.name, ctx.region, exc.message)
                time.sleep(random.uniform(0, 0.2 * attempt))
        if self.records.rows:
            self._region_filled = True
        log.info(
            "%s/%s [%s]: committed checkpoint %d (%d rows read)",
            plan.source,
            plan.name,
            ctx.region,
            entry.checkpoints,
            entry.rows_read,
        )
        for name in made:
            wh.drop_stage(name)
        self.close()

    def _prepare(self) -> tuple[Callable[[], None], list[str]]:
        """Build the commit's staging tables, outside its transaction: returns what writes
        them to the table (run inside it) and the tables to drop after."""
        wh, plan, ctx, entry = self.lc.wh, self.lc.plan, self.lc.ctx, self.lc.entry
        rows, deletes = _prepare(wh, plan, self, ctx)
        # The region's first rows (a first load, a new region, a full refresh, which clears
        # the region first): nothing to match, so no stale check, no match count and an
        # INSERT instead of a MERGE (a 2 M-row first load spent 1.1 s of 5.5 s in those
        # three statements).
        replace = self.lc.replace
        fresh = replace is not None and replace.whole
        merge = (
            bool(rows)
            and _dedupes(plan)
            and not fresh
            and self._filled(wh, plan.target, ctx.region)
        )
        cursor = plan.stream.cursor
        if merge and rows and cursor and plan.mode == "incremental_deduped":
            outside, params = (None, []) if replace is None else replace.window()
            stale = sql.stale_rows(plan.target, wh.stage_ref(rows), plan.keys, cursor, outside)
            check_stale(wh, plan, self, wh.stage_ref(rows), stale, params)
        columns = self.records.columns

        def write() -> None:
            if replace is not None:
                replace.clear(wh, plan.target, ctx.region)
            _apply(wh, plan, columns, rows, deletes, ctx, entry, merge)

        return write, [name for name in (rows, deletes) if name]

    def _apply(self, write: Callable[[], None]) -> None:
        """The commit's one transaction: what is staged, the quarantine, the state."""
        wh, plan, ctx, entry = self.lc.wh, self.lc.plan, self.lc.ctx, self.lc.entry
        now = utcnow()
        with wh.transaction():
            write()
            if self.bad.ref:
                wh.execute(
                    ledger.quarantine_sql(wh, self.bad.ref),
                    [ctx.run_id, ctx.pipeline, plan.source, plan.name, ctx.region, now],
                )
                entry.quarantined += self.bad.rows
            self.lc.end_checkpoint(self.state, now)

    def _filled(self, wh: Warehouse, target: str, region: str) -> bool:
        if self._region_filled is None:
            self._region_filled = region_has_rows(wh, target, region)
        return self._region_filled


def _prepare(
    wh: Warehouse, plan: StreamPlan, pending: StagedLoad, ctx: RunContext
) -> tuple[str | None, str | None]:
    """Build the rows to write and the keys to delete as staging tables.

    A replacement's tombstones only take out its own rows: they replay history the
    rows outside its window already reflect (a key deleted, then written again).
    """
    stage, dels = pending.records.ref, pending.deletes.ref
    if plan.mode == "full_refresh_overwrite":
        dels = None  # a full snapshot already leaves out what was deleted
    rows = deletes = None
    if stage:
        rows = f"_mds_rows_{plan.name}"
        select = sql.prepare_rows(
            stage,
            dels,
            plan.keys,
            plan.stream.cursor,
            pending.records.columns,
            deleted_at=SOURCE_DELETED_AT,
            dedupe=_dedupes(plan),
            soft=plan.soft,
        )
        wh.execute(
            f"CREATE OR REPLACE TEMP TABLE {sql.ident(rows)} AS {select}",
            [ctx.region, ctx.run_id, ctx.loaded_at],
        )
    if dels and pending.lc.replace is None:
        deletes = f"_mds_dels_{plan.name}"
        select = sql.prepare_deletes(dels, plan.keys, SOURCE_DELETED_AT)
        wh.execute(f"CREATE OR REPLACE TEMP TABLE {sql.ident(deletes)} AS {select}", [ctx.region])
    return rows, deletes


def _dedupes(plan: StreamPlan) -> bool:
    """Merging by key: deduped streams, and soft-deleting full refreshes (which keep rows)."""
    return plan.mode == "incremental_deduped" or _soft_overwrite(plan)


def _soft_overwrite(plan: StreamPlan) -> bool:
    return plan.mode == "full_refresh_overwrite" and plan.soft and bool(plan.keys)


def check_stale(
    wh: Warehouse, plan: StreamPlan, pending: StagedLoad, rows: str, where: str, params: list
) -> None:
    """Rows older than the loaded version would be lost in the merge: never silently.

    ``where`` (on alias ``s`` of ``rows``, with ``params``) names them: they fail the run, or
    go to quarantine and out of ``rows``.
    """
    stale = wh.query(f"SELECT * FROM {rows} AS s WHERE {where}", params)
    if not stale.num_rows:
        return
    if plan.on_bad_record == "fail":
        example = {k: stale.column(k)[0].as_py() for k in plan.keys}
        raise SchemaError(
            f"{stale.num_rows} records have a cursor older than the row already loaded "
            f"(first: {example})",
            source=plan.source,
            stream=plan.name,
            key=plan.stream.cursor,
            hint="the source's cursor went backwards; fix the source, or set "
            "`on_bad_record: quarantine` to keep such records in _mds_quarantine",
        )
    engine = (*sql.META_COLUMNS, sql.SEQ, sql.POS, sql.CHANGED_AT)
    data = stale.drop_columns([c for c in engine if c in stale.schema.names])
    pending.add_bad(ledger.bad_records(data, STALE))
    wh.execute(f"DELETE FROM {rows} AS s WHERE {where}", params)


def _apply(
    wh: Warehouse,
    plan: StreamPlan,
    columns: list[str],
    rows: str | None,
    deletes: str | None,
    ctx: RunContext,
    entry: ledger.RunEntry,
    merge: bool,
) -> None:
    """Write one commit: clear (overwrite), then deletes of earlier rows, then new rows
    (merged by key where ``merge``, else inserted)."""
    target = plan.target
    if _soft_overwrite(plan):
        if rows:
            where = sql.missing_keys(target, wh.stage_ref(rows), plan.keys)
            live = f" AND {sql.ident(sql.DELETED_AT)} IS NULL"
            entry.deleted += _count(
                wh, f"SELECT count(*) FROM {target} AS t WHERE {where}{live}", [ctx.region]
            )
            wh.execute(
                f"UPDATE {target} AS t SET {sql.ident(sql.DELETED_AT)} = ? WHERE {where}{live}",
                [ctx.loaded_at, ctx.region],
            )
    elif plan.mode == "full_refresh_overwrite":
        wh.execute(sql.clear_region_sql(target), [ctx.region])
    if deletes:
        ref = wh.stage_ref(deletes)
        entry.deleted += _count(wh, sql.count_deletes(target, ref, plan.keys, plan.soft))
        make = sql.soft_delete_sql if plan.soft else sql.hard_delete_sql
        wh.execute(make(target, ref, plan.keys))
    if rows:
        ref = wh.stage_ref(rows)
        total = _count(wh, f"SELECT count(*) FROM {ref}")
        if merge:
            matched = _count(wh, sql.count_matches(target, ref, plan.keys))
            wh.execute(sql.merge_sql(target, ref, plan.keys, plan.stream.cursor, columns))
            entry.updated += matched
            entry.inserted += total - matched
        else:
            wh.execute(sql.insert_sql(target, ref, columns))
            entry.inserted += total


def detect_deletes(
    wh: Warehouse, plan: StreamPlan, keys: str, ctx: RunContext, entry: ledger.RunEntry
) -> None:
    """Delete (hard or soft) the region's rows whose keys the source no longer has.

    ``keys`` holds the source's complete key set (from a full read). With a
    ``delete_window``, only rows whose cursor falls inside it are candidates.
    """
    since = ctx.loaded_at - plan.delete_window if plan.delete_window else None
    cursor = plan.stream.cursor if since else None
    where = sql.missing_keys(plan.target, keys, plan.keys, cursor)
    live = f" AND t.{sql.ident(sql.DELETED_AT)} IS NULL" if plan.soft else ""
    # The anti-join runs once, into a staging table of the keys that went: it gives the
    # count, and the delete is then a join with that (small) table.
    gone = f"_mds_gone_{plan.name}"
    columns = ", ".join(f"t.{sql.ident(c)}" for c in (*plan.keys, sql.REGION))
    wh.execute(
        f"CREATE OR REPLACE TEMP TABLE {sql.ident(gone)} AS SELECT {columns}, "
        f"?::TIMESTAMP AS {sql.ident(sql.DELETED_AT)} FROM {plan.target} AS t WHERE {where}{live}",
        [ctx.loaded_at, ctx.region, *([since] if since else [])],
    )
    try:
        ref = wh.stage_ref(gone)
        count = _count(wh, f"SELECT count(*) FROM {ref}")
        if count:
            make = sql.soft_delete_sql if plan.soft else sql.hard_delete_sql
            with wh.transaction():
                wh.execute(make(plan.target, ref, plan.keys))
        entry.deleted += count
    finally:
        wh.drop_stage(gone)


def region_has_rows(wh: Warehouse, target: str, region: str) -> bool:
    """Whether the target holds any row of ``region``, deleted (soft) rows included."""
    found = wh.query(f"SELECT 1 FROM {target} WHERE {sql.ident(sql.REGION)} = ? LIMIT 1", [region])
    return found.num_rows > 0


def _count(wh: Warehouse, query: str, params: list | None = None) -> int:
    return int(wh.query(query, params).column(0)[0].as_py())
