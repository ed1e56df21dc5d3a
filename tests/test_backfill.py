"""Backfills: one partition per day, each overwriting exactly its rows, resumable, idempotent."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml

import connectors
from stack.config import load_config
from stack.errors import ConfigError
from stack.run import backfill, pipeline
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.counting_source import reads
from tests.servers.prefect_server import using_api

WINDOW = {"start": "{{ start }}", "end": "{{ end }}"}


@pytest.fixture(autouse=True)
def _counting_connector(monkeypatch):
    monkeypatch.setitem(connectors.REGISTRY, "counting", "tests.counting_source:CountingSource")


def write_config(folder: Path, source: dict | None = None, backfill_section=None) -> Path:
    """A stack.yml with one region and the counting source (events: append, items: deduped)."""
    config = {
        "name": "shop",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(folder / "warehouse")}},
        "regions": {"us": {"timezone": "America/New_York"}},
        "sources": {
            "feed": {
                "connector": "counting",
                "config": {"log": str(folder / "reads.jsonl"), **(source or WINDOW)},
                "schema": "raw_feed",
                "streams": {
                    "events": {"sync": "incremental_append"},
                    "items": {"sync": "incremental_deduped"},
                },
            }
        },
    }
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def table(folder: Path, name: str) -> list[tuple]:
    """The data columns of a table, sorted (metadata columns left out)."""
    with DuckDBWarehouse(folder / "warehouse") as wh:
        rows = wh.query(f"SELECT id, day, value, _mds_region FROM raw_feed.{name} ORDER BY id")
    return [tuple(r.values()) for r in rows.to_pylist()]


def ledger_rows(folder: Path) -> list[tuple]:
    with DuckDBWarehouse(folder / "warehouse") as wh:
        rows = wh.query(
            "SELECT source, stream, partition_start, partition_end, status, rows_read "
            "FROM _mds_backfills ORDER BY stream, partition_start"
        )
    return [tuple(r.values()) for r in rows.to_pylist()]


def test_partitions_are_whole_calendar_days_weeks_or_months():
    days = backfill.partitions(date(2026, 1, 30), date(2026, 2, 2))
    assert [str(p) for p in days] == [
        "2026-01-30..2026-01-31",
        "2026-01-31..2026-02-01",
        "2026-02-01..2026-02-02",
        "2026-02-02..2026-02-03",
    ]
    weeks = backfill.partitions(date(2026, 1, 7), date(2026, 1, 13), "week")  # Wed..Tue
    assert [str(p) for p in weeks] == ["2026-01-05..2026-01-12", "2026-01-12..2026-01-19"]
    months = backfill.partitions(date(2026, 1, 15), date(2026, 3, 1), "month")
    assert [p.key for p in months] == ["2026-01-01", "2026-02-01", "2026-03-01"]
    assert months[1].template_vars() == {"start": "2026-02-01", "end": "2026-03-01"}
    with pytest.raises(ConfigError, match="ends"):
        backfill.partitions(date(2026, 1, 2), date(2026, 1, 1))


def test_a_backfill_of_5_days_rerun_twice_gives_the_same_warehouse(tmp_path):
    path = write_config(tmp_path)
    first = backfill.run_backfill(backfill.BackfillSelection(path, "2026-01-01", "2026-01-05"))
    assert {(e.stream, e.status) for e in first} == {
        ("events", "succeeded"),
        ("items", "succeeded"),
    }
    assert len(first) == 10  # 5 partitions x 2 streams
    events, items, done = table(tmp_path, "events"), table(tmp_path, "items"), ledger_rows(tmp_path)
    assert len(events) == len(items) == 15  # 3 rows a day
    assert {r[1] for r in events} == {date(2026, 1, d) for d in range(1, 6)}
    assert [r[4] for r in done] == ["succeeded"] * 10
    log = tmp_path / "reads.jsonl"
    assert len(reads(log)) == 10 and all(r["state"] is None for r in reads(log))

    again = backfill.run_backfill(backfill.BackfillSelection(path, "2026-01-01", "2026-01-05"))
    assert again == []  # every partition is done: nothing read, nothing written
    assert len(reads(log)) == 10

    forced = backfill.run_backfill(
        backfill.BackfillSelection(path, "2026-01-02", "2026-01-03"), force=True
    )
    assert len(forced) == 4 and all(e.replaced == 3 for e in forced)
    assert len(reads(log)) == 14
    assert table(tmp_path, "events") == events
    assert table(tmp_path, "items") == items
    assert ledger_rows(tmp_path) == done


def test_each_partition_overwrites_exactly_its_rows_and_leaves_the_stream_state(tmp_path):
    # A source that ignores the window (it always has Jan 1-7): the engine cuts it.
    path = write_config(tmp_path, {"start": "2026-01-01", "end": "2026-01-08", "version": 1})
    config = load_config(path)
    pipeline.run_pipeline(path, None, pipeline.select(config, "us"), transform=False)
    before = {name: table(tmp_path, name) for name in ("events", "items")}
    with DuckDBWarehouse(tmp_path / "warehouse") as wh:
        state = wh.query("SELECT stream, state FROM _mds_state ORDER BY stream").to_pylist()

    write_config(tmp_path, {"start": "2026-01-01", "end": "2026-01-08", "version": 2})
    entries = backfill.run_backfill(backfill.BackfillSelection(path, "2026-01-03", "2026-01-04"))
    assert {e.replaced for e in entries} == {3}  # 3 rows of one day, per stream and day
    assert {e.rows_read for e in entries} == {3}  # 21 read, 18 cut away
    for name in ("events", "items"):
        after = table(tmp_path, name)
        assert len(after) == len(before[name]) == 21
        changed = [r for r in after if r not in before[name]]
        assert {r[1] for r in changed} == {date(2026, 1, 3), date(2026, 1, 4)}
        assert all(r[2] // 100_000 == 2 for r in changed) and len(changed) == 6
    with DuckDBWarehouse(tmp_path / "warehouse") as wh:
        assert wh.query("SELECT stream, state FROM _mds_state ORDER BY stream").to_pylist() == state


def test_a_failed_partition_is_redone_and_only_it(tmp_path):
    fail = {"stream": "events", "times": 1, "retryable": False}
    path = write_config(tmp_path, {**WINDOW, "fail": fail})
    first = backfill.run_backfill(backfill.BackfillSelection(path, "2026-01-01", "2026-01-03"))
    failed = [e for e in first if e.status == "failed"]
    assert [(e.stream, e.partition) for e in failed] == [("events", "2026-01-01..2026-01-02")]
    assert "scripted failure" in (failed[0].error or "")
    plan = backfill.pending_partitions(backfill.BackfillSelection(path, "2026-01-01", "2026-01-03"))
    assert [(r.partition.key, r.streams) for r in plan.pending] == [
        ("2026-01-01", (("feed", "events"),))
    ]
    assert len(plan.done) == 2

    log = tmp_path / "reads.jsonl"
    count = len(reads(log))
    second = backfill.run_backfill(backfill.BackfillSelection(path, "2026-01-01", "2026-01-03"))
    assert [(e.stream, e.status) for e in second] == [("events", "succeeded")]
    assert len(reads(log)) == count + 1
    assert len(table(tmp_path, "events")) == len(table(tmp_path, "items")) == 9


def test_full_refresh_streams_are_not_backfilled(tmp_path):
    path = write_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["sources"]["feed"]["streams"]["items"] = {"sync": "full_refresh_overwrite"}
    path.write_text(yaml.safe_dump(config))
    assert backfill.backfill_streams(load_config(path)) == [("feed", "events")]
    with pytest.raises(ConfigError, match="no partitions"):
        backfill.backfill_streams(load_config(path), streams=["items"])


@pytest.mark.slow
def test_the_backfill_flow_runs_one_pipeline_run_per_day_and_resumes(tmp_path, prefect_api):
    from flows.backfill import backfill as backfill_flow

    path = write_config(tmp_path)
    with using_api(prefect_api):
        first = backfill_flow("2026-01-01", "2026-01-05", config_path=str(path))
        snapshot = (table(tmp_path, "events"), table(tmp_path, "items"))
        second = backfill_flow("2026-01-01", "2026-01-05", config_path=str(path))
    days = [f"us 2026-01-0{d}" for d in range(1, 6)]
    assert first == backfill.BackfillOutcome(succeeded=days)
    assert second == backfill.BackfillOutcome(skipped=days)
    assert (table(tmp_path, "events"), table(tmp_path, "items")) == snapshot
    assert len(snapshot[0]) == 15 and len(reads(tmp_path / "reads.jsonl")) == 10
