"""mdstack: the local paginated API through RestSource and ``sync_stream`` into DuckDB.

``full_refresh_overwrite`` (the direct load path) into a fresh DuckLake folder, the
source's defaults but the pagination (page_number, ``total_pages_path``). Timed: warehouse
open, discover, the sync and its commit.

Usage: ``python mdstack_rest.py BASE_URL PAGE_SIZE WAREHOUSE``.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from _report import Stopwatch, emit

from connectors.rest import RestSource
from stack.config import SourceConfig
from stack.load import RunContext, plan_stream, sync_stream
from stack.warehouse.duckdb import DuckDBWarehouse


def main() -> None:
    base, size, warehouse = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    config = {
        "base_url": base,
        "pagination": {
            "type": "page_number",
            "param": "page",
            "start": 1,
            "size_param": "size",
            "size": size,
            "total_pages_path": "$.meta.total_pages",
        },
        "streams": {"items": {"path": "/items", "records": "$.data", "primary_key": ["id"]}},
    }
    stream_cfg = {"sync": "full_refresh_overwrite"}
    cfg = SourceConfig.model_validate(
        {"connector": "rest", "schema": "raw", "streams": {"items": stream_cfg}}
    )
    with Stopwatch() as sw:
        source = RestSource("api", config)
        with DuckDBWarehouse(warehouse) as wh:
            plan = plan_stream("api", cfg, source.discover(), "items")
            entry = sync_stream(wh, source, plan, RunContext("bench", "default", uuid.uuid4().hex))
    with DuckDBWarehouse(warehouse) as wh:
        count = wh.query('SELECT count(*) AS n FROM "raw"."items"').to_pylist()[0]["n"]
    emit(sw.seconds, entry.rows_read, table_rows=count)


if __name__ == "__main__":
    main()
