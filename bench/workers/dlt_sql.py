"""dlt: ``sql_table`` from PostgreSQL into DuckDB, run in the dlt peer's own virtualenv.

``--disposition replace`` is a full load; ``merge`` with ``--cursor`` is dlt's
incremental merge (``dlt.sources.incremental(cursor)``, the table's primary key).
``--strategy scd2`` makes the merge dlt's SCD2 at load time
(``write_disposition={"disposition": "merge", "strategy": "scd2"}``), with ``--merge-key``
so that an incremental load retires only the versions of the keys it read (without it,
dlt retires every active row the load lacks); ``--loader-file-format`` picks dlt's load
files. Every other dlt setting is left at its default. Timed: building the source and
``pipeline.run`` (extract, normalize, load).

Usage: ``python dlt_sql.py --url URL --schema S --table T --backend B
--destination OUT.duckdb --pipelines-dir DIR [--disposition merge --cursor C]
[--strategy scd2 --merge-key K] [--loader-file-format parquet]``. With ``scd2`` the
report adds ``current_rows`` (versions with ``_dlt_valid_to`` NULL).
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
    parser.add_argument("--strategy", help="merge strategy, e.g. scd2")
    parser.add_argument("--merge-key")
    parser.add_argument("--loader-file-format")
    args = parser.parse_args()
    disposition = args.disposition
    if args.strategy:
        disposition = {"disposition": args.disposition, "strategy": args.strategy}
    with Stopwatch() as sw:
        incremental = dlt.sources.incremental(args.cursor) if args.cursor else None
        resource = sql_table(
            credentials=args.url,
            table=args.table,
            schema=args.schema,
            backend=args.backend,
            incremental=incremental,
        )
        if args.merge_key:
            resource.apply_hints(merge_key=args.merge_key)
        pipeline = dlt.pipeline(
            pipeline_name="bench",
            destination=dlt.destinations.duckdb(args.destination),
            dataset_name="raw",
            pipelines_dir=args.pipelines_dir,
        )
        pipeline.run(
            resource, write_disposition=disposition, loader_file_format=args.loader_file_format
        )
    counts = pipeline.last_trace.last_normalize_info.row_counts
    rows = counts.get(args.table, 0)
    extra = {}
    with pipeline.sql_client() as client:
        table_rows = client.execute_sql(f'SELECT count(*) FROM "{args.table}"')[0][0]
        if args.strategy == "scd2":
            extra["current_rows"] = client.execute_sql(
                f'SELECT count(*) FROM "{args.table}" WHERE _dlt_valid_to IS NULL'
            )[0][0]
    emit(sw.seconds, rows, table_rows=table_rows, **extra)


if __name__ == "__main__":
    main()
