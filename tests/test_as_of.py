"""The warehouse as a run left it: ``mdstack sql --as-of RUN_ID`` on the demo.

Each run records the DuckLake snapshot it left the warehouse at (``_mds_run_snapshots``);
reading as of a run attaches the lake at that snapshot, read-only. After three days and a
fourth whose audit failed, each run's marts read back exactly as they were when it ended.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stack.warehouse.duckdb import DuckDBWarehouse
from tests.test_publish import failing_audit, project, rows_of, run

pytestmark = pytest.mark.slow

MARTS = "SELECT region, day, orders, revenue FROM marts.daily_revenue ORDER BY region, day"
RAW = "SELECT count(*) AS n FROM raw_shop.orders"


def mdstack_sql(path: Path, query: str, *more: str) -> subprocess.CompletedProcess:
    command = ["sql", query, "-c", str(path), "--format", "json", *more]
    return subprocess.run(
        [sys.executable, "-c", "from stack.cli import app; app()", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )


def as_json(rows: list[tuple], names: list[str]) -> list[dict]:
    """Rows as ``mdstack sql --format json`` prints them (values through ``str``)."""
    return [{n: str(v) for n, v in zip(names, row, strict=True)} for row in rows]


def read_as_of(path: Path, query: str, run_id: str) -> list[dict]:
    done = mdstack_sql(path, query, "--as-of", run_id)
    assert done.returncode == 0, done.stdout + done.stderr
    return [{k: str(v) for k, v in row.items()} for row in json.loads(done.stdout)]


def test_each_run_reads_back_as_it_left_the_warehouse_a_failed_audit_included(tmp_path):
    path = project(tmp_path)
    lake = DuckDBWarehouse(tmp_path / "warehouse")
    seen: dict[str, tuple[list[dict], list[dict]]] = {}
    for _ in range(3):
        summary = run(path)
        assert summary.published
        marts = as_json(rows_of(lake, MARTS), ["region", "day", "orders", "revenue"])
        seen[summary.run_id] = (marts, as_json(rows_of(lake, RAW), ["n"]))
    said = failing_audit(path)  # day 4: loaded, not published
    assert "not published" in said
    raw_now = as_json(rows_of(lake, RAW), ["n"])
    assert raw_now != list(seen.values())[-1][1]

    days = [marts[-1]["day"] for marts, _ in seen.values()]
    assert len(set(days)) == 3  # three different days to tell apart
    for run_id, (marts, raw) in seen.items():
        assert read_as_of(path, MARTS, run_id) == marts, run_id
        assert read_as_of(path, RAW, run_id) == raw, run_id
    [failed] = [
        r["run_id"]
        for r in rows_of_dicts(lake, "SELECT DISTINCT run_id FROM _mds_run_snapshots")
        if r["run_id"] not in seen
    ]
    last_marts = list(seen.values())[-1][0]
    assert read_as_of(path, MARTS, failed) == last_marts  # its marts: the last published
    assert read_as_of(path, RAW, failed) == raw_now  # its raw tables: what it loaded

    unknown = mdstack_sql(path, MARTS, "--as-of", "no-such-run")
    assert unknown.returncode == 1
    assert "run 'no-such-run' of 'shop' recorded no version" in unknown.stderr


def rows_of_dicts(wh: DuckDBWarehouse, sql: str) -> list[dict]:
    with wh:
        return wh.query(sql).to_pylist()
