"""mdstack: Airbyte ``source-faker`` through the airbyte source and ``sync_source`` into DuckDB.

The streams of the catalog file, ``incremental_deduped`` (faker's declared key and cursor)
into a fresh DuckLake folder; faker runs from its installed virtualenv (``package:``; the
bench installs it first). Timed: warehouse open, discover, one connector read per stream
and the commits.

Usage: ``python mdstack_airbyte.py CONFIG_JSON WAREHOUSE STREAM [STREAM ...]``.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

from _report import Stopwatch, emit

from stack.config import StackConfig
from stack.load import RunContext
from stack.run.scope import sync_source
from stack.warehouse.duckdb import DuckDBWarehouse


def main() -> None:
    config, warehouse, streams = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    source = {"package": "airbyte-source-faker", "version": "7.2.1", "config": config}
    cfg = StackConfig.model_validate(
        {
            "name": "bench",
            "target": "local",
            "targets": {"local": {"type": "duckdb", "path": str(warehouse)}},
            "sources": {
                "faker": {
                    "connector": "airbyte",
                    "config": source,
                    "schema": "raw",
                    "streams": {s: {"sync": "incremental_deduped"} for s in streams},
                }
            },
            "path": warehouse.parent / "stack.yml",
        }
    )
    with Stopwatch() as sw, DuckDBWarehouse(warehouse) as wh:
        entries = sync_source(wh, cfg, "faker", RunContext("bench", "default", uuid.uuid4().hex))
    with DuckDBWarehouse(warehouse) as wh:
        counts = {
            s: wh.query(f'SELECT count(*) AS n FROM "raw"."{s}"').to_pylist()[0]["n"]
            for s in streams
        }
    emit(sw.seconds, sum(e.rows_read for e in entries), table_rows=sum(counts.values()))


if __name__ == "__main__":
    main()
