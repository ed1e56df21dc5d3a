"""The catalog cache of the airbyte source: a connector's ``discover`` runs once per version
and config, not once per sync.

The connector is ``tests/airbyte_fake_source.py`` with ``record_to``: it appends each
command it runs to a file, which is what these tests observe.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from connectors import load_source
from connectors.airbyte import catalogs
from connectors.base import Batch, ConfiguredStream, StreamSpec
from connectors.errors import ConnectorError
from stack.cli import app
from tests.test_airbyte_source import FAKE, fake, received, rows, sync

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
