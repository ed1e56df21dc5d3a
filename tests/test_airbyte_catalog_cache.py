"""The catalog cache of the airbyte source: a connector's ``discover`` runs once per version
and config, not once per sync.

The connector is ``tests/airbyte_fake_source.py`` with ``record_to``: it appends each
command it runs to a file, which is what these tests observe.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from connectors import load_source
from connectors.airbyte import catalogs
from connectors.airbyte.records import Records
from connectors.base import Batch, ConfiguredStream, StreamSpec
from connectors.errors import ConnectorError
from stack.cli import app
from tests.test_airbyte_source import FAKE, fake, items_state, received, rows, stored, sync

STREAMS = {"items": {"sync": "incremental_deduped"}}


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "catalogs"
    monkeypatch.setenv(catalogs.CACHE_ENV, str(folder))
    return folder


def verbs(log: Path) -> list[str]:
    return [r["verb"] for r in received(log)] if log.exists() else []


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.json"))


def test_a_second_sync_uses_the_cached_catalog_instead_of_discover(
    warehouse, tmp_path: Path, cache: Path
) -> None:
    log = tmp_path / "commands.jsonl"
    source = fake(count=5, record_to=str(log))
    sync(warehouse, tmp_path, source, STREAMS, "r1")
    sync(warehouse, tmp_path, source, STREAMS, "r2")
    assert verbs(log) == ["discover", "read", "read"]
    assert rows(warehouse) == [(i,) for i in range(1, 6)]
    (entry,) = entries(cache)
    assert [s["name"] for s in json.loads(entry.read_text())["streams"]] == [
        "items",
        "events",
        "blobs",
    ]
    assert os.stat(cache).st_mode & 0o777 == 0o700
    assert {os.stat(p).st_mode & 0o777 for p in cache.iterdir()} == {0o600}


def test_a_config_change_discovers_again(warehouse, tmp_path: Path, cache: Path) -> None:
    log = tmp_path / "commands.jsonl"
    sync(warehouse, tmp_path, fake(count=5, record_to=str(log)), STREAMS, "r1")
    sync(warehouse, tmp_path, fake(count=7, record_to=str(log)), STREAMS, "r2")
    sync(warehouse, tmp_path, fake(count=7, record_to=str(log)), STREAMS, "r3")
    assert verbs(log) == ["discover", "read", "discover", "read", "read"]
    assert len(entries(cache)) == 2  # one per config


def test_a_new_version_of_the_connector_discovers_again(warehouse, tmp_path: Path) -> None:
    log = tmp_path / "commands.jsonl"
    script = tmp_path / "source.py"
    shutil.copy(FAKE, script)
    source = {"executable": [sys.executable, str(script)], "config": {"count": 3}}
    source["config"]["record_to"] = str(log)
    sync(warehouse, tmp_path, source, STREAMS, "r1")
    sync(warehouse, tmp_path, source, STREAMS, "r2")
    stat = script.stat()
    os.utime(script, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # upgraded
    sync(warehouse, tmp_path, source, STREAMS, "r3")
    assert verbs(log) == ["discover", "read", "read", "discover", "read"]


def without_stream(cache: Path, name: str) -> None:
    """Drop a stream from the one cached catalog: as if it was cached before the connector
    offered that stream."""
    (entry,) = entries(cache)
    content = json.loads(entry.read_text())
    content["streams"] = [s for s in content["streams"] if s["name"] != name]
    entry.write_text(json.dumps(content))


def project(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "stack.yml"
    source = {"connector": "airbyte", "config": config, "schema": "raw", "streams": STREAMS}
    spec = {
        "name": "p",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": "warehouse/"}},
        "sources": {"src": source},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sync_refresh_catalog_discovers_again_and_replaces_the_cached_catalog(
    tmp_path: Path, cache: Path
) -> None:
    log = tmp_path / "commands.jsonl"
    path = project(tmp_path, fake(count=4, record_to=str(log)))
    runner = CliRunner()

    def sync_command(*extra: str) -> None:
        result = runner.invoke(app, ["sync", "--config", str(path), *extra])
        assert result.exit_code == 0, result.output

    sync_command()
    sync_command()
    without_stream(cache, "blobs")  # a stream the connector has gained since (not synced)
    sync_command("--refresh-catalog")
    (entry,) = entries(cache)
    assert "blobs" in [s["name"] for s in json.loads(entry.read_text())["streams"]]
    sync_command()
    assert verbs(log) == ["discover", "read", "read", "discover", "read", "read"]
    help_text = " ".join(runner.invoke(app, ["sync", "--help"]).output.split())
    assert "--refresh-catalog" in help_text and "discover" in help_text


def test_run_refresh_catalog_discovers_again_in_the_flow(tmp_path: Path, cache: Path) -> None:
    log = tmp_path / "commands.jsonl"
    config = fake(count=2, record_to=str(log))
    load_source("airbyte", "src", config).discover()  # cached by an earlier run
    command = [sys.executable, "-c", "from stack.cli import app; app()", "run"]
    command += ["--config", str(project(tmp_path, config)), "--refresh-catalog"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert verbs(log) == ["discover", "discover", "read"]


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b'{"format": 1, "streams": [{"na',
        b"\x00\xff",
        b'{"format": 1, "streams": [3]}',
        b'{"format": 1, "streams": [{"name": "items", "json_schema": 3}]}',
    ],
)
def test_a_damaged_cache_file_is_ignored_and_rewritten(
    tmp_path: Path, cache: Path, damage: bytes
) -> None:
    log = tmp_path / "commands.jsonl"
    config = fake(count=1, record_to=str(log))
    load_source("airbyte", "src", config).discover()
    (entry,) = entries(cache)
    entry.write_bytes(damage)
    catalog = load_source("airbyte", "src", config).discover()
    assert catalog.names == ("items", "events", "blobs")
    assert json.loads(entry.read_text())["streams"][0]["name"] == "items"
    load_source("airbyte", "src", config).discover()
    assert verbs(log) == ["discover", "discover"]


def test_a_damaged_key_file_only_costs_a_discover(tmp_path: Path, cache: Path) -> None:
    log = tmp_path / "commands.jsonl"
    config = fake(count=1, record_to=str(log))
    load_source("airbyte", "src", config).discover()
    (cache / ".key").write_bytes(b"short")
    load_source("airbyte", "src", config).discover()
    load_source("airbyte", "src", config).discover()
    assert verbs(log) == ["discover", "discover"]


def test_the_cache_holds_no_config_value(tmp_path: Path, cache: Path) -> None:
    secret = "sk-live-5c0ffee5ecret"
    config = fake(count=1, api_key=secret, options={"mode": "fast"}, record_to=str(tmp_path / "x"))
    load_source("airbyte", "src", config).discover()
    assert entries(cache)
    for path in cache.iterdir():
        assert secret.encode() not in path.read_bytes() and secret not in path.name
        assert str(tmp_path / "x").encode() not in path.read_bytes()


def test_a_catalog_that_echoes_a_secret_is_not_cached(tmp_path: Path, cache: Path) -> None:
    secret = "sk-live-5c0ffee5ecret"
    log = tmp_path / "commands.jsonl"
    wild = {"schema": {"type": "object", "description": f"key {secret}"}, "records": "[]"}
    config = fake(count=1, api_key=secret, wild=wild, record_to=str(log))
    for _ in range(2):
        assert "wild" in load_source("airbyte", "src", config).discover().names
    assert verbs(log) == ["discover", "discover"]
    assert entries(cache) == []


def test_a_stream_missing_from_the_cached_catalog_is_discovered_once(
    warehouse, tmp_path: Path, cache: Path
) -> None:
    log = tmp_path / "commands.jsonl"
    source = fake(count=3, record_to=str(log))
    sync(warehouse, tmp_path, source, STREAMS, "r1")
    without_stream(cache, "events")
    both = STREAMS | {"events": {"sync": "full_refresh_overwrite"}}
    sync(warehouse, tmp_path, source, both, "r2")
    assert verbs(log) == ["discover", "read", "discover", "read", "read"]
    assert rows(warehouse, "events", "seq") == [(1,), (2,), (3,)]
    (entry,) = entries(cache)
    assert "events" in [s["name"] for s in json.loads(entry.read_text())["streams"]]


def test_a_read_of_a_stream_missing_from_the_cache_discovers_once_then_fails(
    tmp_path: Path, cache: Path
) -> None:
    log = tmp_path / "commands.jsonl"
    config = fake(count=2, record_to=str(log))
    events = load_source("airbyte", "src", config).discover().stream("events")
    without_stream(cache, "events")
    reading = load_source("airbyte", "src", config).read(
        ConfiguredStream(events, "full_refresh_append"), None
    )
    assert sum(m.data.num_rows for m in reading if isinstance(m, Batch)) == 2
    nope = ConfiguredStream(StreamSpec("nope", events.schema), "full_refresh_append")
    with pytest.raises(ConnectorError, match="the connector has no stream 'nope'"):
        list(load_source("airbyte", "src", config).read(nope, None))
    assert verbs(log) == ["discover", "discover", "read", "discover"]


def test_concurrent_syncs_never_read_half_a_catalog() -> None:
    big = [{"name": f"s{i}", "json_schema": {"description": "x" * 1000}} for i in range(500)]
    small = [{"name": "one"}]
    catalogs.store("c", {"k": 1}, small, [])
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            catalogs.store("c", {"k": 1}, big, [])
            catalogs.store("c", {"k": 1}, small, [])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        seen = [catalogs.load("c", {"k": 1}) for _ in range(300)]
    finally:
        stop.set()
        writer.join()
    assert all(s in (big, small) for s in seen)


# -- a column added upstream: fields the cached catalog lacks ---------------------------------
COLOR = {"color": {"type": ["null", "string"]}}


def columns(wh, table: str = "items") -> list[str]:
    result = wh.query(f"SELECT * FROM raw.{table} LIMIT 0")
    return [c for c in result.column_names if not c.startswith("_mds")]


def test_a_column_added_upstream_fails_the_cached_sync_retryably_then_is_loaded(
    warehouse, tmp_path: Path, cache: Path
) -> None:
    log, upstream = tmp_path / "commands.jsonl", tmp_path / "upstream.json"
    source = fake(count=5, upstream=str(upstream), record_to=str(log))
    sync(warehouse, tmp_path, source, STREAMS, "r1")
    upstream.write_text(json.dumps({"count": 8, "columns": COLOR}))  # the table gained a column
    with pytest.raises(ConnectorError) as err:
        sync(warehouse, tmp_path, source, STREAMS, "r2")
    message = str(err.value)
    assert err.value.retryable and err.value.stream == "items" and "'color'" in message
    assert "--refresh-catalog" in message and "discovered again" in message
    assert rows(warehouse) == [(i,) for i in range(1, 6)]  # rows 6-8 did not land without it
    assert "color" not in columns(warehouse) and stored(warehouse) == items_state(5)
    (entry,) = entries(cache)  # the outdated catalog was replaced by the connector's own
    items = json.loads(entry.read_text())["streams"][0]
    assert "color" in items["json_schema"]["properties"]
    sync(warehouse, tmp_path, source, STREAMS, "r3")
    assert verbs(log) == ["discover", "read", "read", "discover", "read"]
    assert rows(warehouse, columns="id, color") == [
        *((i, None) for i in range(1, 6)),
        *((i, f"color {i}") for i in range(6, 9)),
    ]
    assert stored(warehouse) == items_state(8)


def test_a_retry_of_the_same_source_reads_the_added_column(tmp_path: Path) -> None:
    log, upstream = tmp_path / "commands.jsonl", tmp_path / "upstream.json"
    config = fake(count=3, upstream=str(upstream), record_to=str(log))
    load_source("airbyte", "src", config).discover()
    upstream.write_text(json.dumps({"columns": COLOR}))
    source = load_source("airbyte", "src", config)  # a flow run's source, kept for retries
    events = ConfiguredStream(source.discover().stream("events"), "full_refresh_append")
    assert sum(m.data.num_rows for m in source.read(events, None) if isinstance(m, Batch)) == 3
    spec = source.discover().stream("items")
    with pytest.raises(ConnectorError, match="'color'") as err:
        list(source.read(ConfiguredStream(spec, "full_refresh_append"), None))
    assert err.value.retryable
    got = source.read(ConfiguredStream(spec, "full_refresh_append"), None)
    batch = next(m.data for m in got if isinstance(m, Batch))
    assert batch.column("color").to_pylist() == ["color 1", "color 2", "color 3"]
    assert verbs(log) == ["discover", "read", "read", "discover", "read"]


def test_fields_the_connector_never_declares_are_dropped_with_a_fresh_or_cached_catalog(
    warehouse, tmp_path: Path, cache: Path
) -> None:
    log = tmp_path / "commands.jsonl"
    source = fake(count=4, undeclared={"debug": "x", "trace_id": 7}, record_to=str(log))
    sync(warehouse, tmp_path, source, STREAMS, "r1")  # discovered fresh: dropped, as ever
    assert "debug" not in columns(warehouse) and rows(warehouse) == [(i,) for i in range(1, 5)]
    sync(warehouse, tmp_path, source, STREAMS | {"items": {"sync": "full_refresh_overwrite"}}, "r2")
    # cached: the connector's discover is asked again, declares neither, so they are dropped
    assert verbs(log) == ["discover", "read", "read", "discover"]
    assert "debug" not in columns(warehouse) and rows(warehouse) == [(i,) for i in range(1, 5)]
    assert len(entries(cache)) == 1


def test_nested_fields_and_streams_without_properties_never_count_as_added(
    tmp_path: Path, cache: Path
) -> None:
    log = tmp_path / "commands.jsonl"
    config = fake(count=2, record_to=str(log))
    load_source("airbyte", "src", config).discover()
    source = load_source("airbyte", "src", config)
    catalog = source.discover()
    for name in ("items", "blobs"):  # items: meta holds {"n", "even"}; blobs: any record
        stream = ConfiguredStream(catalog.stream(name), "full_refresh_append")
        assert sum(m.data.num_rows for m in source.read(stream, None) if isinstance(m, Batch))
    assert verbs(log) == ["discover", "read", "read"]


@pytest.mark.parametrize("meta", [False, True], ids=["Arrow-read columns", "JSON-text column"])
def test_records_report_undeclared_fields_of_their_own_stream_only(meta: bool) -> None:
    properties: dict[str, Any] = {"id": {"type": "integer"}, "price": {"type": "number"}}
    nested = {"meta": {"deep": 1}} if meta else {}  # a nested field: never reported
    properties |= {"meta": {"type": "object"}} if meta else {}
    found: list[tuple[str, ...]] = []
    records = Records("src", "items", {"properties": properties}, undeclared=found.append)

    def line(data: dict[str, Any], stream: str = "items") -> bytes:
        return json.dumps({"type": "RECORD", "record": {"stream": stream, "data": data}}).encode()

    def batch(*lines: bytes) -> list[dict[str, Any]]:
        return records.to_batch(lines, max(map(len, lines))).to_pylist()

    assert batch(line({"id": 1} | nested), line({"id": 2, "x": 1}, "other"))
    assert batch(line({"id": 1, "price": "n/a"}))[0]["price"] == "n/a"  # re-read, no field
    assert found == []
    assert batch(line({"id": 3, "price": "n/a", "b": None}), line({"id": 4, "a": 1}))
    assert found == [("a", "b")]
    assert batch(line({"id": 5, "c": 1}))[0]["id"] == 5  # reported once, then dropped
    assert found == [("a", "b")]
