"""``_mds_backfills``: which partitions of which streams are done, in the warehouse itself.

One row per (pipeline, region, source, stream, partition): the last attempt at it.
A partition's row is written as ``succeeded`` in the transaction that replaces its
rows, so the warehouse alone says which partitions a rerun may skip.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import date, datetime

import pyarrow as pa

from stack import sql
from stack.errors import MdstackError
from stack.load.ledger import ensure_tables
from stack.warehouse.base import Warehouse

log = logging.getLogger(__name__)

BACKFILLS_TABLE = "_mds_backfills"

_LEDGER_SCHEMA = pa.schema(
    [
        ("pipeline", pa.string()),
        ("region", pa.string()),
        ("source", pa.string()),
        ("stream", pa.string()),
        ("partition_start", pa.date32()),
        ("partition_end", pa.date32()),
        ("status", pa.string()),
        ("run_id", pa.string()),
        ("rows_read", pa.int64()),
        ("inserted", pa.int64()),
        ("updated", pa.int64()),
        ("replaced", pa.int64()),
        ("started_at", pa.timestamp("us")),
        ("finished_at", pa.timestamp("us")),
        ("error", pa.string()),
    ]
)


@dataclass
class PartitionEntry:
    """One row of ``_mds_backfills``: the last attempt at one stream's partition."""

    pipeline: str
    region: str
    source: str
    stream: str
    partition_start: date
    partition_end: date
    status: str
    run_id: str
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    replaced: int = 0
    """Rows of the partition deleted before it was loaded again."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


def ensure_ledger(wh: Warehouse) -> None:
    """Create ``_mds_backfills`` (and the engine's own tables) if missing."""
    ensure_tables(wh)
    if wh.columns(wh.meta_schema, BACKFILLS_TABLE) is None:
        wh.create_table(wh.meta_schema, BACKFILLS_TABLE, _LEDGER_SCHEMA)


def record_partition(wh: Warehouse, entry: PartitionEntry) -> None:
    """Rewrite the partition's ledger row, in one transaction (the caller's, else its own)."""
    ref = sql.table(wh.meta_schema, BACKFILLS_TABLE)
    where = " AND ".join(
        f"{sql.ident(c)} = ?" for c in ("pipeline", "region", "source", "stream", "partition_start")
    )
    values = asdict(entry)
    columns = ", ".join(sql.ident(c) for c in values)
    with wh.transaction():
        wh.execute(
            f"DELETE FROM {ref} WHERE {where}",
            [entry.pipeline, entry.region, entry.source, entry.stream, entry.partition_start],
        )
        wh.execute(
            f"INSERT INTO {ref} ({columns}) VALUES ({', '.join('?' for _ in values)})",
            list(values.values()),
        )


def record_partition_failure(wh: Warehouse, entry: PartitionEntry) -> None:
    """Best effort: the failure itself must surface even if the ledger cannot be written.

    A partition whose transaction committed (a step after it failed) stays succeeded.
    """
    try:
        done = done_partitions(wh, entry.pipeline, entry.region)
        if (entry.source, entry.stream, entry.partition_start) not in done:
            record_partition(wh, entry)
    except MdstackError as exc:
        log.warning("could not record the failed partition in the ledger: %s", exc)


def done_partitions(wh: Warehouse, pipeline: str, region: str) -> set[tuple[str, str, date]]:
    """(source, stream, partition start) of the partitions that succeeded in ``region``.

    Call :func:`ensure_ledger` first.
    """
    rows = wh.query(
        f"SELECT {sql.ident('source')}, {sql.ident('stream')}, {sql.ident('partition_start')} "
        f"FROM {sql.table(wh.meta_schema, BACKFILLS_TABLE)} "
        f"WHERE {sql.ident('pipeline')} = ? AND {sql.ident('region')} = ? "
        f"AND {sql.ident('status')} = 'succeeded'",
        [pipeline, region],
    ).to_pylist()
    return {(r["source"], r["stream"], r["partition_start"]) for r in rows}


def forget_done(wh: Warehouse, pipeline: str, keys: list[tuple[str, str, str, date]]) -> int:
    """Delete the rows of ``(region, source, stream, partition start)`` in one transaction;
    returns how many there were."""
    table = sql.table(wh.meta_schema, BACKFILLS_TABLE)
    ref = f"{sql.ident('pipeline')} = ? AND {sql.ident('region')} = ? AND {sql.ident('source')} = ?"
    where = f"{ref} AND {sql.ident('stream')} = ? AND {sql.ident('partition_start')} = ?"
    removed = 0
    with wh.transaction():
        for key in keys:
            params = [pipeline, *key]
            count = wh.query(f"SELECT count(*) FROM {table} WHERE {where}", params)
            removed += int(count.column(0)[0].as_py())
            wh.execute(f"DELETE FROM {table} WHERE {where}", params)
    return removed
