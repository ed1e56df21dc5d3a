"""dlt: the local paginated API through ``rest_api_source`` into DuckDB (dlt's virtualenv).

Defaults but the paginator (page_number with ``total_path``); ``--parquet`` asks for
Parquet load files (``loader_file_format="parquet"``) instead of dlt's default.

Usage: ``python dlt_rest.py BASE_URL PAGE_SIZE OUT.duckdb PIPELINES_DIR [--parquet]``.
"""

from __future__ import annotations

import sys

import dlt
from _report import Stopwatch, emit
from dlt.sources.rest_api import rest_api_source


def main() -> None:
    base, size, out, pipelines = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    parquet = "--parquet" in sys.argv[5:]
    with Stopwatch() as sw:
        source = rest_api_source(
            {
                "client": {
                    "base_url": base,
                    "paginator": {
                        "type": "page_number",
                        "page_param": "page",
                        "base_page": 1,
                        "total_path": "meta.total_pages",
                    },
                },
                "resources": [
                    {
                        "name": "items",
                        "endpoint": {
                            "path": "items",
                            "params": {"size": size},
                            "data_selector": "data",
                        },
                    }
                ],
            }
        )
        pipeline = dlt.pipeline(
            pipeline_name="bench_rest",
            destination=dlt.destinations.duckdb(out),
            dataset_name="raw",
            pipelines_dir=pipelines,
        )
        pipeline.run(source, loader_file_format="parquet" if parquet else None)
    rows = pipeline.last_trace.last_normalize_info.row_counts.get("items", 0)
    emit(sw.seconds, rows)


if __name__ == "__main__":
    main()
