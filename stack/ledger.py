"""The state table and the run ledger, kept in the warehouse itself.

``_mds_state`` holds each stream's last committed state per region; it is
written in the same transaction as the data it covers, so the warehouse alone
says where the next run resumes. ``_mds_runs`` holds one row per run and
stream: what was read, inserted, updated, deleted and quarantined, the schema
changes applied, and how it ended. ``_mds_quarantine`` keeps records that
could not be loaded (with ``on_bad_record: quarantine``), with the reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime

import pyarrow as pa

from connectors.base import State
from stack.sql import ident, table
from stack.warehouse.base import Warehouse

STATE_TABLE = "_mds_state"
RUNS_TABLE = "_mds_runs"
QUARANTINE_TABLE = "_mds_quarantine"

_STATE_SCHEMA = pa.schema(
    [
        ("pipeline", pa.string()),
        ("source", pa.string()),
        ("stream", pa.string()),
        ("region", pa.string()),
        ("state", pa.string()),
        ("run_id", pa.string()),
        ("updated_at", pa.timestamp("us")),
    ]
)


@dataclass(frozen=True)
class StreamKey:
    """Identifies one stream's state: runs of different regions never share it."""

    pipeline: str
    source: str
    stream: str
    region: str

    def params(self) -> list[str]:
        return [self.pipeline, self.source, self.stream, self.region]


@dataclass
class RunEntry:
    """One row of ``_mds_runs``: a stream's outcome within a run (cumulative counts)."""

    run_id: str
    pipeline: str
    source: str
    stream: str
    region: str
    mode: str
    status: str
    started_at: datetime
    deletes: str = "hard"
    """How deletes were applied: hard, soft or none (``deleted`` counts them)."""
    finished_at: datetime | None = None
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    quarantined: int = 0
    checkpoints: int = 0
    seconds: float = 0.0
    schema_changes: str | None = None
    error: str | None = None


_RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("pipeline", pa.string()),
        ("source", pa.string()),
        ("stream", pa.string()),
        ("region", pa.string()),
        ("mode", pa.string()),
        ("status", pa.string()),
        ("started_at", pa.timestamp("us")),
        ("deletes", pa.string()),
        ("finished_at", pa.timestamp("us")),
        ("rows_read", pa.int64()),
        ("inserted", pa.int64()),
        ("updated", pa.int64()),
        ("deleted", pa.int64()),
        ("quarantined", pa.int64()),
        ("checkpoints", pa.int64()),
        ("seconds", pa.float64()),
        ("schema_changes", pa.string()),
        ("error", pa.string()),
    ]
)
assert [f.name for f in fields(RunEntry)] == _RUNS_SCHEMA.names


_KEY_WHERE = (
    f"{ident('pipeline')} = ? AND {ident('source')} = ? AND {ident('stream')} = ? "
    f"AND {ident('region')} = ?"
)


_QUARANTINE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("pipeline", pa.string()),
        ("source", pa.string()),
        ("stream", pa.string()),
        ("region", pa.string()),
        ("reason", pa.string()),
        ("record", pa.string()),
        ("quarantined_at", pa.timestamp("us")),
    ]
)
QUARANTINE_COLUMNS = pa.schema([("reason", pa.string()), ("record", pa.string())])
"""What the engine stages per bad record; the rest of a quarantine row is added at commit."""


def ensure_tables(wh: Warehouse) -> None:
    """Create the state, run and quarantine tables, or add columns a newer version needs."""
    tables = (
        (STATE_TABLE, _STATE_SCHEMA),
        (RUNS_TABLE, _RUNS_SCHEMA),
        (QUARANTINE_TABLE, _QUARANTINE_SCHEMA),
    )
    for name, schema in tables:
        existing = wh.columns(wh.meta_schema, name)
        if existing is None:
            wh.create_table(wh.meta_schema, name, schema)
        elif missing := [f for f in schema if f.name not in existing]:
            wh.add_columns(wh.meta_schema, name, pa.schema(missing))


def bad_records(rows: pa.Table, reason: str) -> pa.RecordBatch:
    """Bad records as (reason, JSON record) rows: off the hot path, so plain JSON is fine."""
    records = [json.dumps(r, default=str, sort_keys=True) for r in rows.to_pylist()]
    return pa.record_batch(
        [pa.array([reason] * len(records), pa.string()), pa.array(records, pa.string())],
        schema=QUARANTINE_COLUMNS,
    )


def quarantine_sql(wh: Warehouse, staged: str) -> str:
    """INSERT of staged bad records. Parameters: run id, pipeline, source, stream, region, now."""
    return (
        f"INSERT INTO {table(wh.meta_schema, QUARANTINE_TABLE)} "
        f"SELECT ?, ?, ?, ?, ?, {ident('reason')}, {ident('record')}, ?::TIMESTAMP FROM {staged}"
    )


def read_state(wh: Warehouse, key: StreamKey) -> State | None:
    """The last committed state of a stream in a region, or ``None`` before its first sync."""
    result = wh.query(
        f"SELECT {ident('state')} FROM {table(wh.meta_schema, STATE_TABLE)} WHERE {_KEY_WHERE}",
        key.params(),
    )
    return json.loads(result.column(0)[0].as_py()) if result.num_rows else None


def write_state(wh: Warehouse, key: StreamKey, state: State, run_id: str, now: datetime) -> None:
    """Replace a stream's state. Call inside the transaction that writes the data it covers."""
    ref = table(wh.meta_schema, STATE_TABLE)
    wh.execute(f"DELETE FROM {ref} WHERE {_KEY_WHERE}", key.params())
    wh.execute(
        f"INSERT INTO {ref} VALUES (?, ?, ?, ?, ?, ?, ?)",
        [*key.params(), json.dumps(state, sort_keys=True, default=str), run_id, now],
    )


def reset_state(wh: Warehouse, key: StreamKey) -> None:
    """Forget a stream's state: its next sync starts from the beginning."""
    wh.execute(f"DELETE FROM {table(wh.meta_schema, STATE_TABLE)} WHERE {_KEY_WHERE}", key.params())


def record(wh: Warehouse, entry: RunEntry) -> None:
    """Upsert a stream's row of the run ledger (by run id, source, stream and region)."""
    ref = table(wh.meta_schema, RUNS_TABLE)
    wh.execute(
        f"DELETE FROM {ref} WHERE {ident('run_id')} = ? AND {ident('source')} = ? "
        f"AND {ident('stream')} = ? AND {ident('region')} = ?",
        [entry.run_id, entry.source, entry.stream, entry.region],
    )
    values = asdict(entry)
    placeholders = ", ".join("?" for _ in values)
    wh.execute(
        f"INSERT INTO {ref} ({', '.join(ident(c) for c in values)}) VALUES ({placeholders})",
        list(values.values()),
    )


ABANDONED = (
    "the run stopped before it finished (killed or crashed); its committed checkpoints stand"
)


def close_abandoned(wh: Warehouse, key: StreamKey, run_id: str) -> None:
    """Mark earlier runs of this stream still ``running`` as ``aborted``.

    Call while holding the stream's lock: no other run can be active, so a
    ``running`` row left behind belongs to a process that died.
    """
    wh.execute(
        f"UPDATE {table(wh.meta_schema, RUNS_TABLE)} SET {ident('status')} = 'aborted', "
        f"{ident('error')} = ? WHERE {_KEY_WHERE} AND {ident('status')} = 'running' "
        f"AND {ident('run_id')} <> ?",
        [ABANDONED, *key.params(), run_id],
    )


def latest_runs(wh: Warehouse, pipeline: str) -> pa.Table:
    """The most recent ledger row per (source, stream, region), with the stored state."""
    runs = table(wh.meta_schema, RUNS_TABLE)
    states = table(wh.meta_schema, STATE_TABLE)
    return wh.query(
        f"SELECT r.*, s.state FROM {runs} AS r LEFT JOIN {states} AS s "
        f"USING (pipeline, source, stream, region) WHERE r.pipeline = ? "
        f"QUALIFY row_number() OVER (PARTITION BY r.source, r.stream, r.region "
        f"ORDER BY r.started_at DESC) = 1 ORDER BY r.source, r.stream, r.region",
        [pipeline],
    )
