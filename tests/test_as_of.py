"""History on the demo: ``mdstack sql --as-of RUN_ID`` and ``mdstack diff RUN_A RUN_B``.

Each run records the DuckLake snapshot it left the warehouse at (``_mds_run_snapshots``);
reading as of a run attaches the lake at that snapshot, read-only. After three days and a
fourth whose audit failed, each run's marts read back exactly as they were when it ended,
and what ``diff`` says a day changed in each loaded table is what that day's run
recorded in its ledger, counted apart from the change feed.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stack.warehouse.duckdb import DuckDBWarehouse
from tests.test_publish import failing_audit, project, rows_of, run

pytestmark = pytest.mark.slow

MARTS = "SELECT region, day, orders, revenue FROM marts.daily_revenue ORDER BY region, day"
RAW = "SELECT count(*) AS n FROM raw_shop.orders"


def cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    """``mdstack ARGS -c stack.yml`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-c", "from stack.cli import app; app()", *args, "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def mdstack(path: Path, *args: str) -> str:
    """What ``mdstack ARGS`` prints (it must succeed)."""
    done = cli(path, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def mdstack_sql(path: Path, query: str, *more: str) -> subprocess.CompletedProcess:
    return cli(path, "sql", query, "--format", "json", *more)


def as_json(rows: list[tuple], names: list[str]) -> list[dict]:
    """Rows as ``mdstack sql --format json`` prints them (values through ``str``)."""
    return [{n: str(v) for n, v in zip(names, row, strict=True)} for row in rows]


def read_as_of(path: Path, query: str, run_id: str) -> list[dict]:
    done = mdstack_sql(path, query, "--as-of", run_id)
    assert done.returncode == 0, done.stdout + done.stderr
    return [{k: str(v) for k, v in row.items()} for row in json.loads(done.stdout)]


def test_each_run_reads_back_as_it_left_the_warehouse_and_diff_says_what_it_changed(tmp_path):
    path = project(tmp_path)
    lake = DuckDBWarehouse(tmp_path / "warehouse")
    seen: dict[str, tuple[list[dict], list[dict]]] = {}
    for _ in range(3):
        summary = run(path)
        assert summary.published and summary.dbt is not None
        assert summary.dbt.previous_run == (list(seen)[-1] if seen else None)  # diff's hint
        marts = as_json(rows_of(lake, MARTS), ["region", "day", "orders", "revenue"])
        seen[summary.run_id] = (marts, as_json(rows_of(lake, RAW), ["n"]))
    said = failing_audit(path)  # day 4: loaded, not published
    assert "not published" in said
    assert f"what it changed: mdstack diff {list(seen)[-1]} " in said
    raw_now = as_json(rows_of(lake, RAW), ["n"])
    assert raw_now != list(seen.values())[-1][1]

    days = [marts[-1]["day"] for marts, _ in seen.values()]
    assert len(set(days)) == 3  # three different days to tell apart
    for run_id, (marts, raw) in seen.items():
        assert read_as_of(path, MARTS, run_id) == marts, run_id
        assert read_as_of(path, RAW, run_id) == raw, run_id
    # By time: each run's marts as of the moment its version was recorded (UTC, naive).
    recorded = rows_of_dicts(
        lake,
        "SELECT run_id, max(recorded_at) AS at FROM _mds_run_snapshots GROUP BY run_id",
    )
    times = {r["run_id"]: r["at"] for r in recorded}
    for run_id, (marts, _) in seen.items():
        assert read_as_of(path, MARTS, times[run_id].isoformat()) == marts, run_id
    before_all = mdstack_sql(path, MARTS, "--as-of", "2001-01-01T00:00")
    assert before_all.returncode == 1
    assert "keeps no version from 2001-01-01T00:00 or before" in before_all.stderr
    [failed] = [
        r["run_id"]
        for r in rows_of_dicts(lake, "SELECT DISTINCT run_id FROM _mds_run_snapshots")
        if r["run_id"] not in seen
    ]
    last_marts = list(seen.values())[-1][0]
    assert read_as_of(path, MARTS, failed) == last_marts  # its marts: the last published
    assert read_as_of(path, RAW, failed) == raw_now  # its raw tables: what it loaded

    runs = list(seen)
    for first, second in itertools.pairwise(runs):
        said_diff = mdstack(path, "diff", first, second, "--format", "json")
        found = {(d["table"], d["region"]): d for d in json.loads(said_diff)}
        ledger = rows_of_dicts(
            lake,
            f"SELECT stream, region, inserted, updated, deleted FROM _mds_runs "
            f"WHERE run_id = '{second}' AND stream <> 'products'",  # products: overwritten
        )
        assert ledger
        for row in ledger:
            d = found.get((f"raw_shop.{row['stream']}", row["region"]), {})
            counted = (d.get("added", 0), d.get("changed", 0), d.get("deleted", 0))
            assert counted == (row["inserted"], row["updated"], row["deleted"]), (second, row)
        changed = found[("raw_shop.orders", "eu")]["columns"]
        assert "status" in changed and "_mds_run_id" not in changed
        assert found[("marts.daily_revenue", "eu")]["rebuilt"] is True
    one = json.loads(mdstack(path, "diff", runs[0], "--table", "raw_shop.orders", "-f", "json"))
    assert [d["table"] for d in one] == ["raw_shop.orders"]  # to now: two days of changes
    assert one[0]["added"] > found[("raw_shop.orders", "eu")]["added"]

    # A table made after a run, without a region column: skipped between earlier runs,
    # all added since the last.
    mdstack(path, "sql", "CREATE TABLE raw_shop.extra AS SELECT 1 AS id")
    again = json.loads(mdstack(path, "diff", runs[0], runs[1], "-f", "json"))
    assert "raw_shop.extra" not in {d["table"] for d in again}
    since = json.loads(mdstack(path, "diff", runs[-1], "--table", "raw_shop.extra", "-f", "json"))
    assert [(d["region"], d["added"]) for d in since] == [("", 1)]

    unknown = mdstack_sql(path, MARTS, "--as-of", "no-such-run")
    assert unknown.returncode == 1
    assert "run 'no-such-run' of 'shop' recorded no version" in unknown.stderr

    # Retention: a dry run removes nothing; expiring keeps what is current and every clone.
    now_marts = as_json(rows_of(lake, MARTS), ["region", "day", "orders", "revenue"])
    said = mdstack(path, "expire", "--older-than", "0s", "--dry-run")
    assert said.startswith("would remove") and read_as_of(path, MARTS, runs[0])
    mdstack(path, "clone", "dev")
    said = mdstack(path, "expire", "--older-than", "0s")
    assert said.startswith("removed") and " 0 file(s)" not in said, said
    assert as_json(rows_of(lake, MARTS), ["region", "day", "orders", "revenue"]) == now_marts
    dev = DuckDBWarehouse(tmp_path / "warehouse.dev")
    assert as_json(rows_of(dev, MARTS), ["region", "day", "orders", "revenue"]) == now_marts
    gone = mdstack_sql(path, MARTS, "--as-of", runs[0])
    assert gone.returncode == 1 and "no longer keeps version" in gone.stderr, gone.stderr
    also = cli(path, "diff", runs[0])
    assert also.returncode == 1 and "no longer keeps version" in also.stderr
    kept = cli(path, "expire")  # the demo's retention: 30d, all of this history is younger
    assert kept.returncode == 0 and kept.stdout.startswith("removed 0 version(s)"), kept.stdout
    config = yaml.safe_load(path.read_text())
    del config["targets"]["local"]["retention"]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    unset = cli(path, "expire")
    assert unset.returncode == 1 and "add `retention: 30d` to targets.local" in unset.stderr


def rows_of_dicts(wh: DuckDBWarehouse, sql: str) -> list[dict]:
    with wh:
        return wh.query(sql).to_pylist()
