"""PyAirbyte: ``source-faker`` (the same installed executable) into its DuckDB cache.

Runs in PyAirbyte's own virtualenv, offline (``AIRBYTE_OFFLINE_MODE=1``: no registry
lookup), with ``local_executable=`` pointing at the faker mdstack installed. Timed:
``get_source`` (spec, discover), the read and PyAirbyte's load into its cache.

Usage: ``python pyairbyte_faker.py FAKER_EXECUTABLE CONFIG_JSON DUCKDB_FILE STREAM [...]``.
"""

from __future__ import annotations

import json
import sys

from _report import Stopwatch, emit


def main() -> None:
    executable, config, db, streams = (
        sys.argv[1],
        json.loads(sys.argv[2]),
        sys.argv[3],
        sys.argv[4:],
    )
    import airbyte as ab
    from airbyte.caches import DuckDBCache

    with Stopwatch() as sw:
        source = ab.get_source("source-faker", config=config, local_executable=executable)
        source.select_streams(streams)
        result = source.read(cache=DuckDBCache(db_path=db, schema_name="main"))
    rows = sum(len(result[s]) for s in streams)
    emit(sw.seconds, result.processed_records, table_rows=rows)


if __name__ == "__main__":
    main()
