"""dlt: ``sql_table`` from PostgreSQL into DuckDB, run in the dlt peer's own virtualenv.

``--disposition replace`` is a full load; ``merge`` with ``--cursor`` is dlt's
incremental merge (``dlt.sources.incremental(cursor)``, the table's primary key).
Every dlt setting is left at its default but the backend. Timed: building the
source and ``pipeline.run`` (extract, normalize, load).

Usage: ``python dlt_sql.py --url URL --schema S --table T --backend B
--destination OUT.duckdb --pipelines-dir DIR [--disposition merge --cursor C]``.
"""

from __future__ import annotations

import argparse

import dlt
from _report import Stopwatch, emit
from dlt.sources.sql_database import sql_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--backend", default="connectorx")
    parser.add_argument("--destination", required=True)
    parser.add_argument("--pipelines-dir", required=True)
    parser.add_argument("--disposition", default="replace")
    parser.add_argument("--cursor")
    args = parser.parse_args()
    with Stopwatch() as sw:
        incremental = dlt.sources.incremental(args.cursor) if args.cursor else None
        resource = sql_table(
            credentials=args.url,
            table=args.table,
            schema=args.schema,
            backend=args.backend,
            incremental=incremental,
        )
        pipeline = dlt.pipeline(
            pipeline_name="bench",
            destination=dlt.destinations.duckdb(args.destination),
            dataset_name="raw",
            pipelines_dir=args.pipelines_dir,
        )
        pipeline.run(resource, write_disposition=args.disposition)
    counts = pipeline.last_trace.last_normalize_info.row_counts
    rows = counts.get(args.table, 0)
    with pipeline.sql_client() as client:
        table_rows = client.execute_sql(f'SELECT count(*) FROM "{args.table}"')[0][0]
    emit(sw.seconds, rows, table_rows=table_rows)


if __name__ == "__main__":
    main()
