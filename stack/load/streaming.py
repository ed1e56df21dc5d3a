"""The streaming (direct) load: records go straight into the table, in one open transaction.

Append and overwrite streams without deletes need no merge, so staging them
would copy every row twice. Instead a transaction is opened at the first
write of a commit and the commit writes the state and the ledger row and then
COMMITs: data and state still land together, and readers see the old table
until then. Rows the load replaces (a region on overwrite, a backfill window)
are deleted first thing in that transaction.

A warehouse that pulls a stream of batches (``capabilities.stream_append``)
gets the whole commit as one INSERT fed through a :class:`~stack.load.feed.Feed`:
the source is read while the warehouse writes, and memory holds a few batches.
Any other warehouse gets one append per ~200 k buffered rows.
"""

from __future__ import annotations

from contextlib import ExitStack
from functools import partial
from typing import TypeVar

import pyarrow as pa

from connectors.base import State
from stack import sql
from stack.errors import SchemaError
from stack.load import ledger
from stack.load.feed import Feed
from stack.load.history import FirstLoad
from stack.load.plan import HISTORY, StreamPlan, utcnow
from stack.load.staged import LoadContext
from stack.load.staging import BUFFER_ROWS
from stack.warehouse.base import Capabilities


class DirectLoad:
    """Append records to the destination in an open transaction; commit with the state."""

    def __init__(
        self,
        lc: LoadContext,
        max_rows: int = BUFFER_ROWS,
        *,
        dedupe: bool = False,
        versions: FirstLoad | None = None,
    ) -> None:
        self.lc = lc
        self.dedupe = dedupe or versions is not None
        """Keep one row per key at commit (a deduped stream's first load of an empty region:
        see :func:`first_load_direct`), or its versions (``versions``: a history stream's)."""
        self.versions = versions
        self.max_rows = max_rows
        self.state: State | None = None
        self._pending = 0
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._bad: list[pa.RecordBatch] = []
        self._tx: ExitStack | None = None
        self._feed: Feed | None = None
        self._fed = 0
        ctx = lc.ctx
        self._meta = _Constants(
            {sql.REGION: ctx.region, sql.RUN_ID: ctx.run_id, sql.LOADED_AT: ctx.loaded_at}
        )

    @property
    def rows(self) -> int:
        return self._pending

    def add(self, batch: pa.RecordBatch) -> None:
        if self.versions is not None:
            batch = self.versions.add_columns(batch)
        self._pending += batch.num_rows
        if self.lc.wh.capabilities.stream_append:
            self._stream(batch)
            return
        self._buffer.append(batch)
        self._buffered += batch.num_rows
        if self._buffered >= self.max_rows:
            self._flush()

    def migrate(self, schema: pa.Schema) -> None:
        """The schema changed: write out the batches of the old schema first."""
        self._end_feed()
        self._flush()

    def add_deletes(self, keys: pa.RecordBatch) -> None:
        raise SchemaError(
            "the source sent deletes for a stream it declared without them",
            source=self.lc.plan.source,
            stream=self.lc.plan.name,
            hint="fix the source's discover(), or set `deletes: none` on the stream",
        )

    def add_bad(self, records: pa.RecordBatch) -> None:
        self._bad.append(records)  # rare and small: kept until the commit
        self._pending += records.num_rows

    def commit(self) -> None:
        wh, plan, ctx, entry = self.lc.wh, self.lc.plan, self.lc.ctx, self.lc.entry
        tx = self._begin()
        self._end_feed()
        self._flush()
        now = utcnow()
        if self._bad:
            bad = pa.Table.from_batches(self._bad)
            meta = {
                "run_id": ctx.run_id,
                "pipeline": ctx.pipeline,
                "source": plan.source,
                "stream": plan.name,
                "region": ctx.region,
                "quarantined_at": now,
            }
            wh.append(wh.meta_schema, ledger.QUARANTINE_TABLE, _Constants(meta).add(bad))
            entry.quarantined += bad.num_rows
        if self.versions is not None:
            self.versions.settle(wh, ctx.region, entry)
        elif self.dedupe:
            self._keep_latest_per_key()
        self.lc.end_checkpoint(self.state, now)
        self._tx = None
        tx.close()  # COMMIT
        self._bad, self._pending, self.state = [], 0, None

    def _keep_latest_per_key(self) -> None:
        """Delete the rows a later one of the same key supersedes; the region held no row
        before this load, so every row in it is this load's and the inserts are what is left."""
        wh, plan, region, entry = self.lc.wh, self.lc.plan, self.lc.ctx.region, self.lc.entry
        if not wh.query(sql.has_duplicate_keys(plan.target, plan.keys), [region]).num_rows:
            return
        assert plan.stream.cursor is not None, "first_load_direct() needs a cursor"
        wh.execute(
            sql.delete_superseded(plan.target, plan.keys, plan.stream.cursor), [region, region]
        )
        left = wh.query(
            f"SELECT count(*) FROM {plan.target} WHERE {sql.ident(sql.REGION)} = ?", [region]
        )
        entry.inserted = int(left.column(0)[0].as_py())

    def close(self) -> None:
        """Roll back whatever was written since the last commit."""
        self._buffer, self._buffered, self._bad = [], 0, []
        feed, self._feed, self._fed = self._feed, None, 0
        if feed is not None:
            feed.abort()
        if self._tx is not None:
            tx, self._tx = self._tx, None
            tx.__exit__(RuntimeError, RuntimeError("load aborted"), None)

    def _begin(self) -> ExitStack:
        """The load's open transaction, begun (and the region cleared) if there is none."""
        if self._tx is not None:
            return self._tx
        tx = ExitStack()
        tx.enter_context(self.lc.wh.transaction())
        self._tx = tx
        wh, target, region = self.lc.wh, self.lc.plan.target, self.lc.ctx.region
        if self.lc.plan.mode == "full_refresh_overwrite":
            wh.execute(sql.clear_region_sql(target), [region])
        if self.lc.replace is not None:
            self.lc.replace.clear(wh, target, region)
        return tx

    def _stream(self, batch: pa.RecordBatch) -> None:
        """Hand the batch to the commit's INSERT, starting it with the first batch."""
        if self._feed is None:
            self._begin()
            plan = self.lc.plan
            write = partial(self.lc.wh.append, plan.schema, plan.name)
            self._feed = Feed(self._meta.add(batch.slice(0, 0)).schema, write)
        self._feed.put(self._meta.add(batch))
        self._fed += batch.num_rows

    def _end_feed(self) -> None:
        """Wait for the INSERT to take the last batch and finish (or raise its error)."""
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.finish()
            self.lc.entry.inserted += self._fed
            self._fed = 0

    def _flush(self) -> None:
        if not self._buffer:
            return
        self._begin()
        data = pa.Table.from_batches(self._buffer)  # one schema: migrate() flushed the old
        self.lc.wh.append(self.lc.plan.schema, self.lc.plan.name, self._meta.add(data))
        self.lc.entry.inserted += data.num_rows
        self._buffer, self._buffered = [], 0


_Data = TypeVar("_Data", pa.Table, pa.RecordBatch)


class _Constants:
    """Columns holding one value each, built once per length and reused for every batch."""

    def __init__(self, values: dict[str, object]) -> None:
        self.values = values
        self._columns: list[pa.Array] = []

    def add(self, data: _Data) -> _Data:
        rows = data.num_rows
        if not self._columns or len(self._columns[0]) < rows:
            self._columns = [pa.repeat(pa.scalar(v), rows) for v in self.values.values()]
        for name, column in zip(self.values, self._columns, strict=True):
            data = data.append_column(name, column.slice(0, rows))
        return data


def first_load_direct(plan: StreamPlan, capabilities: Capabilities) -> bool:
    """Whether a deduped (or history) stream's load may stream straight into its table when
    the region holds no rows yet (the caller checks that): nothing to merge with, so rows
    need no staging; rows of a key a later cursor supersedes are deleted (made versions) at
    the commit, by row id.
    Not for streams with deletes (a tombstone must meet the row it follows), nor without a
    cursor (the order rows were written in, which would then decide, is not kept by
    DuckDB's parallel writes), nor where a direct load is refused anyway (DDL that commits,
    several processes writing)."""
    return (
        plan.mode in ("incremental_deduped", HISTORY)
        and bool(plan.keys)
        and plan.stream.cursor is not None
        and not plan.propagates_deletes
        and capabilities.row_ids
        and capabilities.streams_into_tables
    )
