"""``mdstack state show|set|reset|log`` and ``mdstack sync|run --full-refresh``, in-process.

What a source was asked for is read back from the counting source's log (every read
appends the state it was handed); what landed, from the warehouse.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner, Result

import connectors
from connectors.base import (
    SYNC_MODES,
    Catalog,
    ConfiguredStream,
    Message,
    State,
    StreamSpec,
    check_state,
)
from connectors.errors import ConnectorError
from stack.cli import app
from stack.load.ledger import RunEntry
from stack.run.summary import changed_streams
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.counting_source import CountingSource, reads
from tests.servers.prefect_server import using_api

STREAMS = {
    "snapshot": "full_refresh_overwrite",
    "copies": "full_refresh_append",
    "events": "incremental_append",
    "items": "incremental_deduped",
}
FIRST = {"start": "2026-01-01", "end": "2026-01-04"}
"""Three days of rows: a first sync leaves the state {"day": "2026-01-03"}."""


class EveryMode(CountingSource):
    """The counting source, offering every sync mode."""

    def discover(self) -> Catalog:
        streams = super().discover().streams
        return Catalog(tuple(dataclasses.replace(s, sync_modes=SYNC_MODES) for s in streams))


class Stalling(EveryMode):
    """Says ``stalled`` on stdout after its first batch of a read from scratch, then hangs:
    a process to kill in the middle of a full refresh."""

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        for index, message in enumerate(super().read(stream, state)):
            yield message
            if state is None and index == 0:
                print("stalled", flush=True)
                time.sleep(600)


@pytest.fixture(autouse=True)
def _every_mode(monkeypatch):
    monkeypatch.setitem(connectors.REGISTRY, "every-mode", "tests.test_state_commands:EveryMode")


def write_config(folder: Path, window: dict[str, str] = FIRST) -> Path:
    """feed: a stream per sync mode; mirror declares ``events`` too; shop: the demo source."""
    log = str(folder / "reads.jsonl")
    config = {
        "name": "shop",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(folder / "warehouse")}},
        "regions": {"us": {"timezone": "America/New_York"}, "eu": {"timezone": "Europe/Berlin"}},
        "sources": {
            "feed": {
                "connector": "every-mode",
                "config": {"log": log, "streams": list(STREAMS), **window},
                "schema": "raw_feed",
                "streams": {name: {"sync": mode} for name, mode in STREAMS.items()},
            },
            "mirror": {
                "connector": "every-mode",
                "config": {"log": log, "streams": ["events"]},
                "schema": "raw_mirror",
                "streams": {"events": {"sync": "incremental_append"}},
            },
            "shop": {
                "connector": "demo",
                "config": {"seed": 1, "region": "{{ region }}", "history_days": 2},
                "schema": "raw_shop",
                "streams": {"orders": {"sync": "incremental_deduped"}},
            },
        },
    }
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def mdstack(path: Path, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--config", str(path)])


def ok(path: Path, *args: str) -> Result:
    result = mdstack(path, *args)
    assert result.exit_code == 0, result.output
    return result


def sync(path: Path, stream: str, *more: str) -> None:
    ok(path, "sync", "--region", "us", "--source", "feed", "--stream", stream, *more)


def last_read(folder: Path, stream: str) -> dict[str, Any] | None:
    return reads(folder / "reads.jsonl", stream)[-1]["state"]


def shown(path: Path, *args: str) -> list[dict[str, Any]]:
    return json.loads(ok(path, "state", "show", "--json", *args).stdout)


def audit(path: Path) -> list[tuple]:
    rows = json.loads(ok(path, "state", "log", "--json").stdout)
    keys = ("user", "action", "source", "stream", "region", "before", "after")
    return [tuple(r[k] for k in keys) for r in rows]


def days(folder: Path, stream: str) -> list[date]:
    with DuckDBWarehouse(folder / "warehouse") as wh:
        found = wh.query(
            f"SELECT DISTINCT day FROM raw_feed.{stream} WHERE _mds_region = 'us' ORDER BY day"
        )
    return [r["day"] for r in found.to_pylist()]


@pytest.mark.parametrize("stream", list(STREAMS))
def test_a_state_set_is_what_the_next_run_reads_from_and_a_reset_reads_from_scratch(
    tmp_path, stream
):
    path = write_config(tmp_path)
    sync(path, stream)
    assert last_read(tmp_path, stream) is None
    (before,) = shown(path, "--source", "feed", "--stream", stream, "--region", "us")
    assert before["state"] == {"day": "2026-01-03"} and before["run_id"]

    said = ok(
        path, "state", "set", stream, "--source", "feed", "--region", "us", '{"day": "2026-01-01"}'
    )
    assert "us: feed." + stream + ' state {"day": "2026-01-01"}' in said.stdout
    (now,) = shown(path, "--source", "feed", "--stream", stream, "--region", "us")
    assert now["state"] == {"day": "2026-01-01"} and now["run_id"] == "manual"
    sync(path, stream)
    assert last_read(tmp_path, stream) == {"day": "2026-01-01"}

    ok(path, "state", "reset", stream, "--source", "feed", "--region", "us")
    assert shown(path, "--source", "feed", "--stream", stream, "--region", "us")[0]["state"] is None
    sync(path, stream)
    assert last_read(tmp_path, stream) is None

    user = getpass.getuser()
    assert audit(path) == [
        (user, "set", "feed", stream, "us", {"day": "2026-01-03"}, {"day": "2026-01-01"}),
        (user, "reset", "feed", stream, "us", {"day": "2026-01-03"}, None),
    ]
    # The rows stay through a reset; every read that followed only added to them.
    assert days(tmp_path, stream) == [date(2026, 1, d) for d in (1, 2, 3)]


def test_full_refresh_drops_what_the_source_deleted_and_stores_the_new_state(tmp_path):
    path = write_config(tmp_path)
    sync(path, "items")
    sync(path, "events")
    # Day 1 was deleted at the source since; day 4 is new.
    write_config(tmp_path, {"start": "2026-01-02", "end": "2026-01-05"})

    sync(path, "items", "--full-refresh")

    assert last_read(tmp_path, "items") is None  # from scratch, the stored state ignored
    assert days(tmp_path, "items") == [date(2026, 1, d) for d in (2, 3, 4)]
    assert days(tmp_path, "events") == [date(2026, 1, d) for d in (1, 2, 3)]  # not selected
    states = {r["stream"]: r["state"] for r in shown(path, "--source", "feed", "--region", "us")}
    assert states["items"] == {"day": "2026-01-04"}
    assert states["events"] == {"day": "2026-01-03"}
    user = getpass.getuser()
    full = (
        user,
        "full_refresh",
        "feed",
        "items",
        "us",
        {"day": "2026-01-03"},
        {"day": "2026-01-04"},
    )
    assert audit(path) == [full]
    with DuckDBWarehouse(tmp_path / "warehouse") as wh:
        runs = wh.query("SELECT stream, full_refresh FROM _mds_runs ORDER BY started_at")
    assert [tuple(r.values()) for r in runs.to_pylist()] == [
        ("items", False),
        ("events", False),
        ("items", True),
    ]

    # The next run resumes from the refresh's state.
    sync(path, "items")
    assert last_read(tmp_path, "items") == {"day": "2026-01-04"}


KILLED_WORKER = """
import sys
sys.path.insert(0, {root!r})
import connectors
connectors.REGISTRY["every-mode"] = "tests.test_state_commands:Stalling"
from stack.cli import app
from stack.load.ledger import RunEntry
from stack.run.summary import changed_streams
app(["sync", "--config", {path!r}, "--region", "us", "--source", "feed", "--stream", {stream!r},
     "--full-refresh"])
"""


@pytest.mark.parametrize("stream", ["events", "items"])
def test_a_full_refresh_killed_mid_read_leaves_the_old_rows_and_state(tmp_path, stream):
    """kill -9 while the rows are being replaced (direct load: appended inside the open
    transaction; staged: staged): the old rows and state stand, no audit row is left."""
    path = write_config(tmp_path)
    sync(path, stream)
    old_days, old_states = days(tmp_path, stream), shown(path)
    write_config(tmp_path, {"start": "2026-01-02", "end": "2026-01-05"})
    root = Path(__file__).resolve().parent.parent
    script = tmp_path / "worker.py"
    script.write_text(KILLED_WORKER.format(root=str(root), path=str(path), stream=stream))
    worker = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=root
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "stalled"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(60)
    assert days(tmp_path, stream) == old_days
    assert shown(path) == old_states
    assert audit(path) == []
    sync(path, stream, "--full-refresh")  # the next one lands
    assert days(tmp_path, stream) == [date(2026, 1, d) for d in (2, 3, 4)]


def test_dbt_rebuilds_what_is_downstream_of_a_full_refresh_of_any_mode():
    """Rows a full refresh dropped are gone from the source table: dbt's incremental models
    downstream only see that when rebuilt (``--full-refresh`` for them too)."""
    now = datetime(2026, 1, 1)
    entries = [
        RunEntry("r", "shop", "feed", "items", "us", "incremental_deduped", "succeeded", now,
                 full_refresh=True),
        RunEntry("r", "shop", "feed", "events", "us", "incremental_append", "succeeded", now,
                 inserted=3),
    ]  # fmt: skip
    assert changed_streams(entries) == {"feed": {"items": True, "events": False}}


BAD = [
    (
        ["set", "nope", "--region", "us", "{}"],
        ["unknown stream 'nope'", "feed.snapshot", "shop.orders"],
    ),
    (
        ["set", "events", "--region", "us", "{}"],
        ["stream 'events' is declared by sources feed, mirror", "--source"],
    ),
    (
        ["set", "items", "--region", "us", "{day: 1}"],
        ["VALUE: not JSON", '\'{"cursor": "2026-01-01"}\''],
    ),
    (
        ["set", "items", "--region", "us", '[{"day": "2026-01-01"}]'],
        ["feed.items does not accept this state", "a state is a JSON object, not list"],
    ),
    (
        ["set", "orders", "--region", "us", '{"day": "yesterday"}'],
        ["shop.orders does not accept this state", '{"day": <the last day delivered'],
    ),
    (
        ["set", "orders", "--region", "us", '{"day": 1, "hour": 3}'],
        ["shop.orders does not accept this state"],
    ),
    (["set", "items", "--region", "mars", "{}"], ["unknown region 'mars'"]),
    (["reset", "nope", "--region", "us"], ["unknown stream 'nope'"]),
    (["reset", "orders", "--source", "feed"], ["unknown stream 'orders'", "feed.items"]),
    (["show", "--stream", "nope"], ["unknown streams ['nope']"]),
]


def test_bad_input_is_refused_in_one_message_and_nothing_is_written(tmp_path):
    path = write_config(tmp_path)
    sync(path, "items")
    ok(path, "sync", "--region", "us", "--source", "shop")
    states = shown(path)
    for args, needles in BAD:
        result = mdstack(path, "state", *args)
        text = " ".join(result.output.split())
        assert result.exit_code == 2, (args, result.output)
        assert text.startswith("config error:") and "Traceback" not in result.output, text
        assert all(n in text for n in needles), (args, text)
    assert shown(path) == states
    assert audit(path) == []


def test_show_lists_every_declared_stream_and_region_and_says_none_before_a_run(tmp_path):
    path = write_config(tmp_path)
    sync(path, "events")
    table = " ".join(ok(path, "state", "show", "--source", "feed").stdout.split())
    assert '│ feed │ events │ us │ {"day": "2026-01-03"} │' in table
    assert "│ feed │ events │ eu │ none │" in table
    listed = {(r["source"], r["stream"], r["region"]) for r in shown(path)}
    assert listed == {
        (source, stream, region)
        for source, names in (("feed", STREAMS), ("mirror", ["events"]), ("shop", ["orders"]))
        for stream in names
        for region in ("us", "eu")
    }


@pytest.mark.slow
def test_run_full_refresh_goes_through_the_prefect_flow(tmp_path, prefect_api):
    path = write_config(tmp_path)
    sync(path, "events")
    write_config(tmp_path, {"start": "2026-01-02", "end": "2026-01-05"})
    with using_api(prefect_api):
        args = ("run", "--region", "us", "--source", "feed", "--stream", "events")
        ok(path, *args, "--full-refresh")
    assert last_read(tmp_path, "events") is None
    assert days(tmp_path, "events") == [date(2026, 1, d) for d in (2, 3, 4)]
    assert [row[1] for row in audit(path)] == ["full_refresh"]


# -- what each source accepts -----------------------------------------------------------------
def stream(cursor: pa.DataType, mode: str = "incremental_deduped") -> ConfiguredStream:
    schema = pa.schema([("id", pa.int64()), ("updated_at", cursor)])
    spec = StreamSpec("items", schema, ("id",), "updated_at", SYNC_MODES)
    return ConfiguredStream(spec, mode, "updated_at", ("id",))


PG = {"host": "localhost", "database": "shop", "user": "reader"}
REST = {"base_url": "http://localhost:1", "streams": {"items": {"path": "/items"}}}
TIMESTAMP, INTEGER = pa.timestamp("us"), pa.int64()
SOURCES: list[tuple[str, dict[str, Any], pa.DataType, list[Any], list[tuple[Any, str]]]] = [
    (
        "demo",
        {"seed": 1, "region": "us"},
        TIMESTAMP,
        [{}, {"day": 0}, {"day": 12}],
        [({"day": -1}, '{"day": <the last day'), ({"day": "3"}, "is not"), ({"days": 3}, "is not")],
    ),
    (
        "postgres",
        PG,
        TIMESTAMP,
        [{}, {"cursor": "2026-01-01T10:00:00"}, {"cursor": "2026-01-01T10:00:00.123456"}],
        [
            ({"cursor": 5}, "no valid cursor (text)"),
            ({"cursor": "yesterday"}, "is not a timestamp[us] (column 'updated_at')"),
            ({"lsn": "0/16B3748"}, 'is not {"cursor"'),
        ],
    ),
    ("postgres", PG, INTEGER, [{"cursor": "12"}], [({"cursor": "twelve"}, "is not a int64")]),
    (
        "postgres",
        {**PG, "replication": {}},
        TIMESTAMP,
        [
            {"lsn": "0/16B3748"},
            {"cursor": "2026-01-01"},
            {"lsn": "0/16B3748", "snapshot": {"after": None}},  # a snapshot being copied
            {"lsn": "0/16B3748", "snapshot": {"after": ["41"]}},
        ],
        [
            ({"lsn": "16B3748"}, "no valid LSN (<hex>/<hex>)"),
            ({"snapshot": {"after": None}}, "no valid LSN (<hex>/<hex>)"),
            ({"lsn": "0/16B3748", "snapshot": {"after": [41]}}, "key value(s) as text"),
            ({"lsn": "0/16B3748", "snapshot": {"after": ["1", "2"]}}, "1 key value(s)"),
            ({"lsn": "0/16B3748", "snapshot": "done"}, "'snapshot' must be"),
        ],
    ),
    (
        "rest",
        REST,
        TIMESTAMP,
        [{}, {"cursor": "2026-01-01T00:00:00Z"}, {"cursor": "2026-01-01"}],
        [
            ({"cursor": 5}, "is not a value of column 'updated_at'"),
            ({"cursor": "soon"}, "ISO 8601"),
            ({"cursor": True}, "no valid cursor"),
        ],
    ),
    ("rest", REST, INTEGER, [{"cursor": 5}, {"cursor": 2.5}], [({"cursor": "5"}, "a number")]),
    (
        "files",
        {"url": "/nowhere/*.csv"},
        TIMESTAMP,
        [{}, {"files": {"/nowhere/a.csv": {"size": 1, "mtime": 2.0, "etag": None}}}],
        [({"files": ["/nowhere/a.csv"]}, 'not a valid files state: {"files"')],
    ),
    (
        "airbyte",
        {"executable": "source-nothing"},
        TIMESTAMP,
        [{}, {"airbyte_state": [{"type": "LEGACY", "data": {}}]}],
        [({"airbyte_state": {"type": "LEGACY"}}, 'is not {"airbyte_state": [<Airbyte')],
    ),
]


@pytest.mark.parametrize(("connector", "config", "cursor", "good", "bad"), SOURCES)
def test_each_source_takes_the_states_its_reads_write_and_names_the_shape_it_expects(
    connector, config, cursor, good, bad
):
    source = connectors.load_source(connector, "src", config)
    for state in good:
        assert check_state(source, stream(cursor), state) == state
    for state, needle in [*bad, ([state for state, _ in bad], "a state is a JSON object")]:
        with pytest.raises(ConnectorError) as refused:
            check_state(source, stream(cursor), state)
        assert needle in refused.value.message, (state, refused.value.message)
    if connector != "demo":  # a full refresh reads everything: the state is only kept
        for state, _ in bad:
            assert check_state(source, stream(cursor, "full_refresh_overwrite"), state) == state
