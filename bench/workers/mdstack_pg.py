"""mdstack: one PostgreSQL table into a DuckDB (DuckLake) warehouse, through the engine.

Runs what ``mdstack sync`` runs for one stream: :class:`connectors.postgres.PostgresSource`,
:func:`stack.load.plan_stream` and :func:`stack.load.sync_stream` into a
:class:`stack.warehouse.duckdb.DuckDBWarehouse` with its default settings (4 threads,
1 GB memory limit). Timed: opening the warehouse, discover, the sync and its commit.

Usage: ``python mdstack_pg.py --source JSON --table T --warehouse DIR --mode MODE
[--cursor C] [--delete-detection snapshot] [--profile OUT.pstats] [--trace-sql]``
(``--trace-sql`` adds the warehouse statements, by total time, to the report).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import uuid
from pathlib import Path

import _sqltrace
from _report import Stopwatch, emit

from connectors.postgres import PostgresSource
from stack.config import SourceConfig
from stack.load import RunContext, plan_stream, sync_stream
from stack.warehouse.duckdb import DuckDBWarehouse

SCHEMA = "raw"


def sync(source_cfg: dict, table: str, warehouse: Path, stream_cfg: dict):
    source = PostgresSource("pg", source_cfg)
    cfg = SourceConfig.model_validate(
        {"connector": "postgres", "schema": SCHEMA, "streams": {table: stream_cfg}}
    )
    ctx = RunContext("bench", "default", uuid.uuid4().hex[:12])
    with DuckDBWarehouse(warehouse) as wh:
        plan = plan_stream("pg", cfg, source.discover(), table)
        return sync_stream(wh, source, plan, ctx)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True, help="PostgresSource config as JSON")
    parser.add_argument("--table", required=True)
    parser.add_argument("--warehouse", required=True, type=Path)
    parser.add_argument("--mode", default="full_refresh_overwrite")
    parser.add_argument("--cursor")
    parser.add_argument("--delete-detection")
    parser.add_argument("--profile", help="write a cProfile of the timed part here")
    parser.add_argument("--trace-sql", action="store_true")
    args = parser.parse_args()
    stream_cfg = {"sync": args.mode}
    if args.cursor:
        stream_cfg["cursor"] = args.cursor
    if args.delete_detection:
        stream_cfg["delete_detection"] = args.delete_detection
    source_cfg = json.loads(args.source)
    profiler = cProfile.Profile() if args.profile else None
    if args.trace_sql:
        _sqltrace.install()
    with Stopwatch() as sw:
        if profiler:
            profiler.enable()
        entry = sync(source_cfg, args.table, args.warehouse, stream_cfg)
        if profiler:
            profiler.disable()
    if profiler:
        profiler.dump_stats(args.profile)
    traced = {"sql": _sqltrace.top(), "sql_seconds": _sqltrace.total()} if args.trace_sql else {}
    with DuckDBWarehouse(args.warehouse) as wh:
        count = wh.query(
            f'SELECT count(*) AS n FROM "{SCHEMA}"."{args.table}" WHERE _mds_deleted_at IS NULL'
        ).to_pylist()[0]["n"]
    emit(
        sw.seconds,
        entry.rows_read,
        inserted=entry.inserted,
        updated=entry.updated,
        deleted=entry.deleted,
        table_rows=count,
        status=entry.status,
        **traced,
    )


if __name__ == "__main__":
    main()
