"""``mdstack-source``: our sources as Airbyte protocol connectors, run as real subprocesses.

Every stdout line must parse into the Airbyte protocol's own models
(``airbyte-protocol-models-dataclasses``, strictly: unknown keys and wrong enum values
fail); RECORD data must equal what the source yields; a read resumed from the STATE
messages it emitted must continue where it stopped. Sources: demo, the machine's
PostgreSQL (incremental by cursor) and a throwaway logical-replication cluster (CDC deletes).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import subprocess
import sys
import types
import typing
import uuid
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from airbyte_protocol_dataclasses.models import airbyte_protocol as ab

from connectors import load_source
from connectors.base import SOURCE_DELETED_AT, Batch, ConfiguredStream, Deletes, Source
from tests.servers.pg_server import connect_kwargs, drop_slots

SCRIPT = Path(sys.executable).with_name("mdstack-source")
DEMO = {"region": "eu", "history_days": 10, "orders_per_day": 200, "batch_size": 500}


# --- running the CLI and parsing its output strictly ---------------------------------------


def _parse(cls: Any, value: Any) -> Any:
    """``value`` as an instance of the protocol type ``cls``; raises on any mismatch."""
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(cls)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _parse(inner, value)
    if cls is Any:
        return value
    if origin in (list, typing.List):  # noqa: UP006
        assert isinstance(value, list), value
        (item,) = typing.get_args(cls)
        return [_parse(item, v) for v in value]
    if origin in (dict, typing.Dict) or cls is ab.AirbyteStateBlob:  # noqa: UP006
        assert isinstance(value, dict), value
        return value
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return cls(value)
    if dataclasses.is_dataclass(cls):
        assert isinstance(value, dict), value
        hints = typing.get_type_hints(cls, vars(ab))
        names = {f.name.rstrip("_"): f.name for f in dataclasses.fields(cls)}
        unknown = set(value) - set(names)
        assert not unknown, f"{cls.__name__} has no fields {unknown}"
        return cls(**{names[k]: _parse(hints[names[k]], v) for k, v in value.items()})
    if cls is float:
        assert isinstance(value, int | float) and not isinstance(value, bool), value
        return value
    assert isinstance(value, cls) and not (cls is int and isinstance(value, bool)), (cls, value)
    return value


def _cli(tmp: Path, *args: str, state: Any = None, **files: Any) -> tuple[int, list[Any]]:
    """Run ``mdstack-source`` with JSON files; returns the exit code and parsed messages."""
    argv = [str(SCRIPT), *args]
    for option, content in [*files.items(), *([("state", state)] if state is not None else [])]:
        path = tmp / f"{option}-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(content))
        argv += [f"--{option}", str(path)]
    done = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    lines = done.stdout.decode().splitlines()
    return done.returncode, [_parse(ab.AirbyteMessage, json.loads(line)) for line in lines]


def _of(messages: list[Any], kind: str) -> list[Any]:
    return [m for m in messages if m.type == ab.Type(kind)]


def _records(messages: list[Any], stream: str) -> list[dict]:
    return [m.record.data for m in _of(messages, "RECORD") if m.record.stream == stream]


def _state_file(messages: list[Any]) -> list[dict]:
    """What an Airbyte platform stores: the last STATE message per stream, as a JSON list."""
    last = {m.state.stream.stream_descriptor.name: m.state for m in _of(messages, "STATE")}
    return [dataclasses.asdict(s, dict_factory=_drop_none) for s in last.values()]


def _drop_none(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in items if v is not None}


def _configured(name: str, sync: str, dest: str, cursor: str | None = None) -> dict:
    entry: dict[str, Any] = {
        "stream": {"name": name, "json_schema": {}, "supported_sync_modes": [sync]},
        "sync_mode": sync,
        "destination_sync_mode": dest,
    }
    if cursor:
        entry["cursor_field"] = [cursor]
    return entry


def _as_json(value: Any) -> Any:
    """A value the source yields as it reads back from a RECORD's JSON."""
    if isinstance(value, datetime | time):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _source_rows(source: Source, stream: ConfiguredStream, state: Any) -> list[dict]:
    """What the source yields directly, as RECORD data (deletes as ``_ab_cdc_deleted_at``)."""
    rows = []
    for m in source.read(stream, state):
        if isinstance(m, Batch):
            rows += [{k: _as_json(v) for k, v in r.items()} for r in m.data.to_pylist()]
        elif isinstance(m, Deletes):
            for r in m.keys.to_pylist():
                at = r.pop(SOURCE_DELETED_AT).isoformat(timespec="microseconds") + "+00:00"
                rows.append({**{k: _as_json(v) for k, v in r.items()}, "_ab_cdc_deleted_at": at})
    return rows


# --- demo ------------------------------------------------------------------------------------


def test_demo_spec_check_discover(tmp_path):
    code, [spec] = _cli(tmp_path, "demo", "spec")
    assert code == 0 and spec.spec.connectionSpecification == load_source("demo", "d", {}).spec()

    code, [ok] = _cli(tmp_path, "demo", "check", config=DEMO)
    assert code == 0 and ok.connectionStatus.status == ab.Status.SUCCEEDED
    code, [bad] = _cli(tmp_path, "demo", "check", config=DEMO | {"orders_per_day": 0})
    assert code == 0 and bad.connectionStatus.status == ab.Status.FAILED
    assert "orders_per_day" in bad.connectionStatus.message

    code, [catalog] = _cli(tmp_path, "demo", "discover", config=DEMO)
    streams = {s.name: s for s in catalog.catalog.streams}
    ours = load_source("demo", "d", DEMO).discover()
    assert list(streams) == list(ours.names)
    orders = streams["orders"]
    assert list(orders.json_schema["properties"]) == [
        *ours.stream("orders").schema.names,
        "_ab_cdc_deleted_at",
    ]
    assert orders.json_schema["properties"]["updated_at"]["format"] == "date-time"
    assert orders.json_schema["properties"]["amount"]["type"] == ["null", "number"]
    assert set(orders.supported_sync_modes) == {ab.SyncMode.full_refresh, ab.SyncMode.incremental}
    assert orders.source_defined_primary_key == [["id"]]
    assert orders.default_cursor_field == ["updated_at"] and orders.source_defined_cursor
    assert streams["order_items"].source_defined_primary_key == [["order_id"], ["line_no"]]
    assert streams["products"].supported_sync_modes == [ab.SyncMode.full_refresh]


def test_demo_read_matches_the_source_and_resumes_from_its_state(tmp_path):
    catalog = {
        "streams": [
            _configured("orders", "incremental", "append_dedup"),
            _configured("products", "full_refresh", "overwrite"),
        ]
    }
    code, first = _cli(tmp_path, "demo", "read", config=DEMO, catalog=catalog)
    assert code == 0
    source = load_source("demo", "d", DEMO)
    spec = source.discover()
    orders = ConfiguredStream(spec.stream("orders"), "incremental_deduped")
    products = ConfiguredStream(spec.stream("products"), "full_refresh_overwrite")
    assert _records(first, "orders") == _source_rows(source, orders, None)
    assert _records(first, "products") == _source_rows(source, products, None)
    assert any("_ab_cdc_deleted_at" in r for r in _records(first, "orders"))
    states = _of(first, "STATE")
    assert [s.state.stream.stream_state for s in states if s.state.stream.stream_descriptor.name
            == "orders"] == [{"day": d} for d in range(10)]  # fmt: skip
    counted = sum(s.state.sourceStats.recordCount for s in states)
    assert counted == len(_of(first, "RECORD"))
    statuses = [
        (t.trace.stream_status.stream_descriptor.name, t.trace.stream_status.status.value)
        for t in _of(first, "TRACE")
    ]
    assert statuses == [
        (name, status)
        for name in ("orders", "products")
        for status in ("STARTED", "RUNNING", "COMPLETE")
    ]

    # the platform passes back the last STATE per stream: the next read is the next day only
    saved = _state_file(first)
    code, second = _cli(tmp_path, "demo", "read", config=DEMO, catalog=catalog, state=saved)
    assert code == 0
    again = _records(second, "orders")
    assert again and again == _source_rows(source, orders, {"day": 9})
    first_ids = {r["id"] for r in _records(first, "orders")}
    changed_on = {(r.get("updated_at") or r["_ab_cdc_deleted_at"])[:10] for r in again}
    assert changed_on == {"2026-01-11"}  # day 10 only
    assert first_ids & {r["id"] for r in again}  # changed orders come again, updated
    assert _of(second, "STATE")[0].state.stream.stream_state == {"day": 10}


def test_errors_are_traces_with_exit_code_1(tmp_path):
    unknown = {"streams": [_configured("nope", "full_refresh", "overwrite")]}
    code, messages = _cli(tmp_path, "demo", "read", config=DEMO, catalog=unknown)
    assert code == 1
    [trace] = _of(messages, "TRACE")
    assert trace.trace.type == ab.TraceType.ERROR
    assert trace.trace.error.failure_type == ab.FailureType.config_error
    assert "nope" in trace.trace.error.message

    bad_state = [{"type": "GLOBAL", "global": {"stream_states": []}}]
    catalog = {"streams": [_configured("orders", "incremental", "append")]}
    code, messages = _cli(tmp_path, "demo", "read", config=DEMO, catalog=catalog, state=bad_state)
    assert code == 1 and "--state" in _of(messages, "TRACE")[0].trace.error.internal_message

    code, messages = _cli(tmp_path, "demo", "read", config=DEMO | {"days": -1}, catalog=catalog)
    assert code == 1
    error = _of(messages, "TRACE")[-1].trace.error
    assert error.failure_type == ab.FailureType.config_error and "days" in error.internal_message

    help_text = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True).stdout
    assert "AirbyteMessage" in help_text and "read" in help_text


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_table(pg_database: dict) -> Any:
    conn = psycopg.connect(**connect_kwargs(pg_database), autocommit=True)
    schema = f"mds_ab_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(
        f"CREATE TABLE {schema}.items (id int PRIMARY KEY, name text, price numeric(8,2),"
        " blob bytea, day date, at timestamptz, seen timestamp)"
    )
    conn.execute(
        f"INSERT INTO {schema}.items SELECT g, 'item ' || g, g * 1.25, '\\xdead'::bytea,"
        " date '2024-01-01' + g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour',"
        " timestamp '2024-01-01 00:00:00.5' FROM generate_series(1, 25) g"
    )
    try:
        yield conn, schema
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


def test_postgres_incremental_read_resumes_with_only_new_rows(tmp_path, pg_table, pg_database):
    conn, schema = pg_table
    config = pg_database | {"schemas": [schema], "batch_size": 10}
    code, [catalog] = _cli(tmp_path, "postgres", "discover", config=config)
    [items] = catalog.catalog.streams
    assert items.source_defined_primary_key == [["id"]]
    props = items.json_schema["properties"]
    assert props["at"]["airbyte_type"] == "timestamp_with_timezone"
    assert props["blob"]["contentEncoding"] == "base64"

    configured = {"streams": [_configured("items", "incremental", "append_dedup", "at")]}
    code, first = _cli(tmp_path, "postgres", "read", config=config, catalog=configured)
    assert code == 0
    source = load_source("postgres", "pg", config)
    stream = ConfiguredStream(source.discover().stream("items"), "incremental_deduped", "at")
    rows = _records(first, "items")
    assert rows == _source_rows(source, stream, None) and len(rows) == 25
    assert rows[0] | {"id": 1} == {
        "id": 1,
        "name": "item 1",
        "price": 1.25,
        "blob": "3q0=",
        "day": "2024-01-02",
        "at": "2024-01-01T01:00:00.000000+00:00",
        "seen": "2024-01-01T00:00:00.500000",
    }

    conn.execute(f"UPDATE {schema}.items SET name = 'changed', at = at + interval '2 days'"
                 " WHERE id = 3")  # fmt: skip
    conn.execute(
        f"INSERT INTO {schema}.items (id, name, at) VALUES (26, 'new', '2024-02-01 00:00+00')"
    )
    state = _state_file(first)
    code, second = _cli(
        tmp_path, "postgres", "read", config=config, catalog=configured, state=state
    )
    assert code == 0
    assert sorted((r["id"], r["name"]) for r in _records(second, "items")) == [
        (3, "changed"),
        (26, "new"),
    ]
    [last] = [m.state.stream.stream_state for m in _of(second, "STATE")][-1:]
    assert last == {"cursor": "2024-02-01T00:00:00+00:00"}


def test_postgres_cdc_deletes_become_ab_cdc_deleted_at(tmp_path, pg_logical):
    conn = psycopg.connect(**connect_kwargs(pg_logical.dsn), autocommit=True)
    schema = f"cdc_ab_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(f"CREATE TABLE {schema}.items (id int PRIMARY KEY, name text)")
    conn.execute(f"INSERT INTO {schema}.items SELECT g, 'item ' || g FROM generate_series(1, 4) g")
    conn.execute(f"CREATE PUBLICATION {schema} FOR TABLE {schema}.items")
    config = pg_logical.dsn | {
        "schemas": [schema],
        "replication": {"slot": schema, "publication": schema},
    }
    catalog = {"streams": [_configured("items", "incremental", "append_dedup")]}
    try:
        code, snapshot = _cli(tmp_path, "postgres", "read", config=config, catalog=catalog)
        assert code == 0 and len(_records(snapshot, "items")) == 4
        conn.execute(f"DELETE FROM {schema}.items WHERE id = 2")
        conn.execute(f"INSERT INTO {schema}.items VALUES (5, 'five')")
        state = _state_file(snapshot)
        code, changes = _cli(tmp_path, "postgres", "read", config=config, catalog=catalog,
                             state=state)  # fmt: skip
        assert code == 0
        rows = sorted(_records(changes, "items"), key=lambda r: r["id"])
        assert [r["id"] for r in rows] == [2, 5]
        gone, new = rows
        assert set(gone) == {"id", "_ab_cdc_deleted_at"}
        assert datetime.fromisoformat(gone["_ab_cdc_deleted_at"]).utcoffset().total_seconds() == 0
        assert new == {"id": 5, "name": "five"}
        # the next read releases the source's slot up to the state the platform kept
        code, _ = _cli(tmp_path, "postgres", "read", config=config, catalog=catalog,
                       state=_state_file(changes))  # fmt: skip
        [kept] = [m.state.stream.stream_state for m in _of(changes, "STATE")][-1:]
        slot = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s"
        assert code == 0 and conn.execute(slot, (schema,)).fetchone()[0] == kept["lsn"]
    finally:
        drop_slots(conn, schema)
        conn.close()
