"""Streams of a run sync in parallel threads, within ``max_parallel_streams`` and each
source's ``concurrency``, into one DuckLake warehouse (the engine path, no Prefect).

The counting source's ``overlap`` makes a read wait until another read of the source
runs at the same time (and fail if none comes): streams that ran one after another
fail, so a green run proves they overlapped.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import connectors
from stack.cli import app
from stack.config import load_config
from stack.run import pipeline
from stack.run.parallel import Bounds, StreamJob
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.counting_source import peak


@pytest.fixture(autouse=True)
def counting(monkeypatch):
    monkeypatch.setitem(connectors.REGISTRY, "counting", "tests.counting_source:CountingSource")


def stack(folder: Path, streams: list[str], concurrency: int, **source_config) -> Path:
    config = {
        "name": "par",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(folder / "warehouse")}},
        "sources": {
            "feed": {
                "connector": "counting",
                "config": {"log": str(folder / "reads.jsonl"), "streams": streams} | source_config,
                "schema": "raw_feed",
                "concurrency": concurrency,
                "streams": {s: {"sync": "incremental_deduped"} for s in streams},
            }
        },
    }
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(path: Path) -> pipeline.RunSummary:
    selection = pipeline.select(load_config(path), "default")
    return pipeline.run_pipeline(path, None, selection, transform=False)


def counts(folder: Path, streams: list[str]) -> dict[str, int]:
    with DuckDBWarehouse(folder / "warehouse") as wh:
        return {
            s: wh.query(f"SELECT count(DISTINCT id) AS n FROM raw_feed.{s}").column(0)[0].as_py()
            for s in streams
        }


def test_two_streams_of_a_source_with_concurrency_2_sync_at_the_same_time(tmp_path):
    path = stack(tmp_path, ["events", "items"], concurrency=2, overlap=2)
    summary = run(path)
    assert summary.ok, summary.failure()
    assert peak(tmp_path / "reads.jsonl") == 2
    assert counts(tmp_path, ["events", "items"]) == {"events": 9, "items": 9}
    with DuckDBWarehouse(tmp_path / "warehouse") as wh:
        states = wh.query("SELECT stream, state FROM _mds_state ORDER BY stream").to_pylist()
    assert states == [
        {"stream": "events", "state": '{"day": "2026-01-03"}'},
        {"stream": "items", "state": '{"day": "2026-01-03"}'},
    ]
    again = run(path)  # resumes in parallel too: nothing new
    assert [s.rows_read for s in again.streams] == [0, 0]


def test_three_streams_with_a_limit_of_two_never_run_three_at_once(tmp_path):
    streams = ["a", "b", "c"]
    path = stack(tmp_path, streams, concurrency=2, overlap=2)
    summary = run(path)
    assert summary.ok, summary.failure()
    assert [s.stream for s in summary.streams] == streams  # the order of stack.yml
    assert peak(tmp_path / "reads.jsonl") == 2
    assert counts(tmp_path, streams) == {"a": 9, "b": 9, "c": 9}


def test_a_failed_stream_leaves_the_parallel_ones_committed(tmp_path):
    fail = {"stream": "events", "times": 1, "after_days": 1}
    path = stack(tmp_path, ["events", "items"], concurrency=2, overlap=2, fail=fail)
    result = CliRunner().invoke(app, ["sync", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "sync failed" in result.output and "scripted failure 1 of events" in result.output
    with DuckDBWarehouse(tmp_path / "warehouse") as wh:
        runs = wh.query("SELECT stream, status FROM _mds_runs ORDER BY stream").to_pylist()
    assert runs == [
        {"stream": "events", "status": "failed"},
        {"stream": "items", "status": "succeeded"},
    ]
    assert counts(tmp_path, ["items"]) == {"items": 9}
    summary = run(path)  # the rerun completes events from its last commit
    assert summary.ok, summary.failure()
    assert counts(tmp_path, ["events", "items"]) == {"events": 9, "items": 9}


def test_bounds_hold_per_source_and_for_the_whole_run(tmp_path):
    config = load_config(stack(tmp_path, ["events", "items"], concurrency=3))
    bounds = Bounds.of(config.model_copy(update={"max_parallel_streams": 2}))
    assert bounds.fits(StreamJob("feed", "x"), Counter({"feed": 1}))
    assert not bounds.fits(StreamJob("feed", "x"), Counter({"feed": 2}))  # the run's 2
    one = Bounds(4, {"feed": 1, "crm": 2})
    assert not one.fits(StreamJob("feed", "x"), Counter({"feed": 1}))  # the source's 1
    assert one.fits(StreamJob("crm", "y"), Counter({"feed": 1, "crm": 1}))
