"""The BI file: the published marts as a plain DuckDB database, for tools with a DuckDB
driver (``bi_file:`` on a DuckDB target; the demo's ``stack.yml`` sets it).

What a BI tool sees is checked with nothing but ``duckdb.connect(path, read_only=True)``:
complete old or complete new marts for a reader that holds the file, or polls it, while
runs publish. That a failed audit leaves the file as it was is part of the
write-audit-publish scenario (``tests/test_publish.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import duckdb
import pytest

from stack.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import ROOT
from tests.test_publish import MARTS, bi_rows, project, rows_of, run

pytestmark = pytest.mark.slow


READER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import duckdb
    done, seen, deadline = Path(sys.argv[2]), set(), time.monotonic() + 600
    while time.monotonic() < deadline:
        finished = done.exists()  # one more read after the writer is done
        with duckdb.connect(sys.argv[1], read_only=True) as con:
            daily = con.execute("SELECT region, sum(revenue) FROM marts.daily_revenue "
                                "GROUP BY ALL ORDER BY 1").fetchall()
            roi = con.execute("SELECT region, sum(revenue) FROM marts.marketing_roi "
                              "GROUP BY ALL ORDER BY 1").fetchall()
        assert daily == roi, ("half-published", daily, roi)
        seen.add(str(daily))
        if finished:
            break
        time.sleep(0.05)  # a dashboard polling
    print(len(seen))
    """
)


def test_readers_holding_or_polling_the_file_see_whole_old_or_whole_new_marts(tmp_path):
    path = project(tmp_path)
    bi_file = tmp_path / "warehouse" / "bi.duckdb"
    assert run(path).published
    with duckdb.connect(str(bi_file), read_only=True) as con:
        tables = {
            tuple(t)
            for t in con.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall()
        }
    assert {("marts", "daily_revenue"), ("marts", "marketing_roi")} <= tables
    assert {schema for schema, _ in tables} == {"marts"}  # the schemas chosen, nothing else
    done = tmp_path / "writer-done"
    poller = subprocess.Popen(
        [sys.executable, "-c", READER, str(bi_file), str(done)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        before = bi_rows(bi_file)
        with duckdb.connect(str(bi_file), read_only=True) as held:
            assert run(path).published  # publishes while this reader has the file open
            assert held.execute(MARTS).fetchall() == before  # the old marts, whole
        after = bi_rows(bi_file)
        assert after != before
        assert after == rows_of(DuckDBWarehouse(tmp_path / "warehouse"), MARTS)
        assert run(path).published
    finally:
        done.touch()
        out, err = poller.communicate(timeout=300)
    assert poller.returncode == 0, err
    assert int(out.strip()) >= 2  # the poller saw more than one published state, each whole
