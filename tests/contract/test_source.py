"""The connector contract suite: what every registered source promises the engine.

Runs once per entry of :data:`connectors.REGISTRY`. A connector proves itself through a
*case* from :data:`CASES`: a context manager that gets a tmp folder and the test's fixture
request (for servers such as the session's PostgreSQL) and yields a ready-to-read
config (creating whatever the source reads: files, a PostgreSQL schema...), a config that must
be refused and the key its error must name, and the cursors ``stack.yml`` would set. A
registered connector without a case fails the suite: add one here.

The promises (``connectors/base.py``):

* ``spec()`` is a JSON Schema (draft 2020-12) that the working config satisfies;
* ``check()`` is ok; a bad config is refused (on construction, by ``check()`` or ``discover()``)
  with a ConnectorError / message naming the bad key;
* ``discover()`` returns a Catalog: unique stream names, Arrow schemas, primary keys and
  cursors that are columns, sync modes among :data:`connectors.base.SYNC_MODES`;
* ``read()`` of each stream, full refresh and (where offered) incremental, yields only
  Batch / Deletes / Checkpoint of that stream (a stream ``loaded_externally`` yields
  ExternalLoad instead of records) and ends with a Checkpoint; every batch carries
  each discovered column with the discovered type or one the engine can fit or widen to
  (:func:`stack.load.schema.supertype`); Deletes only where declared, with exactly the key columns
  and ``_deleted_at``; checkpoints survive a JSON round trip;
* an incremental read resumed from a checkpoint (the middle one and the last one) yields no
  record that was yielded before that checkpoint.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors import REGISTRY, load_source
from connectors.base import (
    SOURCE_DELETED_AT,
    SYNC_MODES,
    Batch,
    Catalog,
    Checkpoint,
    ConfiguredStream,
    Deletes,
    ExternalLoad,
    Message,
    Source,
    StreamSpec,
)
from connectors.errors import ConnectorError
from stack.load.schema import supertype
from tests.servers.pg_server import connect_kwargs


@dataclass(frozen=True)
class Case:
    """How the suite gets one connector.

    Attributes:
        config: a config that works, for a source the case has prepared.
        bad_config: a config the source must refuse...
        bad_key: ...with an error whose message names this key.
        cursors: stream -> cursor column, where ``stack.yml`` would set one.
    """

    config: dict[str, Any]
    bad_config: dict[str, Any]
    bad_key: str
    cursors: dict[str, str] = field(default_factory=dict)


@contextmanager
def demo_case(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Case]:
    config = {"region": "eu", "history_days": 3, "orders_per_day": 20, "batch_size": 40}
    yield Case(config, config | {"orders_per_day": 0}, "orders_per_day")


@contextmanager
def postgres_case(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Case]:
    """Two tables in a fresh schema of this module's database (``tests/servers/pg_server.py``)."""
    server = request.getfixturevalue("pg_database")
    conn = psycopg.connect(**connect_kwargs(server), autocommit=True)
    schema = f"mds_contract_{uuid.uuid4().hex[:10]}"
    try:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}".items (id int PRIMARY KEY, name text, updated_at timestamp)'
        )
        conn.execute(
            f"INSERT INTO \"{schema}\".items SELECT i, 'item ' || i, "
            f"timestamp '2026-01-01' + i * interval '1 hour' FROM generate_series(1, 30) i"
        )
        conn.execute(f'CREATE TABLE "{schema}".notes (body text)')  # no key: full refresh only
        conn.execute(f"INSERT INTO \"{schema}\".notes VALUES ('a'), ('b')")
        config = server | {"schemas": [schema], "batch_size": 7}
        yield Case(config, config | {"port": "5432x"}, "port", {"items": "updated_at"})
    finally:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.close()


@contextmanager
def files_case(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Case]:
    """A CSV stream of two files, a JSON lines file and a Parquet file."""
    (tmp_path / "orders").mkdir()
    (tmp_path / "orders" / "1.csv").write_text("id,amount\n1,10\n2,20\n3,30\n")
    (tmp_path / "orders" / "2.csv").write_text("id,amount\n4,4.5\n")
    (tmp_path / "events.jsonl").write_text('{"id": 1, "kind": "a"}\n{"id": 2, "kind": "b"}\n')
    pq.write_table(pa.table({"day": [1, 2, 3], "value": [0.5, 1.5, None]}), tmp_path / "m.parquet")
    streams = {
        "orders": {"url": str(tmp_path / "orders" / "*.csv")},
        "events": {"url": str(tmp_path / "events.jsonl")},
        "metrics": {"url": str(tmp_path / "m.parquet")},
    }
    config = {"streams": streams, "batch_size": 2}
    yield Case(config, {"url": str(tmp_path / "m.parquet"), "format": "xls"}, "format")


@contextmanager
def rest_case(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Case]:
    """A paginated JSON API on a local server (tests/servers/rest_server.py): a keyed stream and an
    incremental one whose cursor goes out as a request parameter."""
    from tests.servers.rest_server import serving

    with serving() as server:
        api = server.mount(pagination="page_number", campaigns=30, spend_days=6, events=0)
        pagination = {"type": "page_number", "size_param": "per_page", "size": 8}
        config = {
            "base_url": server.base_url(api),
            "pagination": pagination | {"total_pages_path": "$.meta.total_pages"},
            "timeout": 5,
            "streams": {
                "campaigns": {"path": "/campaigns", "records": "$.data", "primary_key": ["id"]},
                "spend": {
                    "path": "/spend",
                    "records": "$.data",
                    "primary_key": ["date", "campaign_id"],
                    "cursor": "date",
                    "cursor_param": "since",
                },
            },
        }
        bad = config | {"pagination": {"type": "bogus"}}
        yield Case(config, bad, "pagination")


@contextmanager
def airbyte_server_case(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Case]:
    """A connection of a local Airbyte API (tests/servers/airbyte_api_server.py) whose jobs
    succeed."""
    from tests.servers.airbyte_api_server import AirbyteApi, connection, serving

    streams = [{"name": "orders", "syncMode": "incremental_append", "cursorField": ["at"]}]
    api = AirbyteApi(bearer={"t0ken"}, connections={"c1": connection("c1", streams)})
    with serving(api) as url:
        config = {"api_url": url, "connection_id": "c1", "bearer": "t0ken", "poll_interval": 0.01}
        yield Case(config, config | {"timeout": 0}, "timeout")


@contextmanager
def airbyte_case(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Case]:
    """The protocol-speaking fake in tests/airbyte_fake_source.py, run as a process."""
    import sys

    fake = Path(__file__).resolve().parent.parent / "airbyte_fake_source.py"
    config = {"executable": [sys.executable, str(fake)], "config": {"count": 30, "state_every": 7}}
    yield Case(config, config | {"config": {"count": "thirty"}}, "config.count")


CASES: dict[str, Callable[[Path, pytest.FixtureRequest], AbstractContextManager[Case]]] = {
    "demo": demo_case,
    "postgres": postgres_case,
    "files": files_case,
    "rest": rest_case,
    "airbyte_server": airbyte_server_case,
    "airbyte": airbyte_case,
}


@pytest.fixture(params=sorted(REGISTRY))
def connector(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def case(connector: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Case]:
    factory = CASES.get(connector)
    if factory is None:
        pytest.fail(
            f"connector {connector!r} is registered but has no contract case: add one to "
            "CASES in tests/contract/test_source.py (a config that works, one that does not)",
            pytrace=False,
        )
    with factory(tmp_path, request) as prepared:
        yield prepared


@pytest.fixture
def source(connector: str, case: Case) -> Source:
    built = load_source(connector, "contract", case.config)
    assert isinstance(built, Source) and built.name == "contract"
    return built


# -- helpers ----------------------------------------------------------------------------------
def configured(spec: StreamSpec, case: Case, incremental: bool) -> ConfiguredStream | None:
    """The stream as the engine would configure it, or None if it offers no such mode."""
    if incremental:
        keyed = "incremental_deduped" in spec.sync_modes and spec.primary_key
        mode = "incremental_deduped" if keyed else "incremental_append"
    else:
        mode = next((m for m in spec.sync_modes if m.startswith("full_refresh")), None)
    if mode not in spec.sync_modes:
        return None
    return ConfiguredStream(
        spec, mode, spec.cursor or case.cursors.get(spec.name), spec.primary_key
    )


def records(messages: list[Message]) -> list[tuple]:
    """Every record yielded, as a hashable, comparable tuple."""
    return [
        tuple(sorted((k, repr(v)) for k, v in row.items()))
        for m in messages
        if isinstance(m, Batch)
        for row in m.data.to_pylist()
    ]


def assert_fits(declared: pa.Schema, actual: pa.Schema, what: str) -> None:
    """Every declared column is there, with a type the engine can fit or widen to."""
    for f in declared:
        assert f.name in actual.names, f"{what} lacks the discovered column {f.name!r}"
        got = actual.field(f.name).type
        widened = supertype(f.type, got)
        assert widened in (f.type, got), f"{what}: {f.name} is {got}, discovered as {f.type}"


def assert_messages(spec: StreamSpec, messages: list[Message]) -> None:
    assert messages and isinstance(messages[-1], Checkpoint), "a read must end with a checkpoint"
    for m in messages:
        assert isinstance(m, Batch | Deletes | Checkpoint | ExternalLoad), f"unexpected {m!r}"
        assert m.stream == spec.name
        if spec.loaded_externally:  # another system loads the rows: the source sends none
            assert not isinstance(m, Batch | Deletes), f"{spec.name} is loaded externally"
        elif isinstance(m, ExternalLoad):
            pytest.fail(f"{spec.name} yields an ExternalLoad but is not loaded_externally")
        if isinstance(m, Batch):
            assert isinstance(m.data, pa.RecordBatch)
            assert_fits(spec.schema, m.data.schema, f"a batch of {spec.name}")
        elif isinstance(m, Deletes):
            assert spec.emits_deletes, f"{spec.name} yields deletes it did not declare"
            assert isinstance(m.keys, pa.RecordBatch)
            assert set(m.keys.schema.names) == {*spec.primary_key, SOURCE_DELETED_AT}
            keys = pa.schema([spec.schema.field(k) for k in spec.primary_key])
            assert_fits(keys, m.keys.schema, f"deletes of {spec.name}")
            assert pa.types.is_timestamp(m.keys.schema.field(SOURCE_DELETED_AT).type)
        elif isinstance(m, Checkpoint):
            assert json.loads(json.dumps(m.state)) == m.state, f"state {m.state!r} is not JSON"


# -- the contract -----------------------------------------------------------------------------
def test_spec_is_a_json_schema_that_the_config_satisfies(source: Source, case: Case) -> None:
    spec = source.spec()
    assert isinstance(spec, dict) and spec.get("type") == "object"
    assert isinstance(spec.get("properties"), dict)
    json.dumps(spec)
    jsonschema.Draft202012Validator.check_schema(spec)
    jsonschema.Draft202012Validator(spec).validate(case.config)


def test_check_is_ok(source: Source) -> None:
    result = source.check()
    assert result.ok, result.message


def test_bad_config_is_refused_naming_the_key(connector: str, case: Case) -> None:
    try:
        bad = load_source(connector, "contract", case.bad_config)
    except ConnectorError as exc:
        assert case.bad_key in str(exc)
        return
    result = bad.check()
    assert not result.ok, f"check() accepted the bad config {case.bad_config!r}"
    assert case.bad_key in result.message
    with pytest.raises(ConnectorError) as err:
        bad.discover()
    assert case.bad_key in str(err.value)


def test_discover_returns_a_consistent_catalog(source: Source) -> None:
    catalog = source.discover()
    assert isinstance(catalog, Catalog) and catalog.streams
    assert len(set(catalog.names)) == len(catalog.names), "stream names must be unique"
    for spec in catalog.streams:
        assert isinstance(spec, StreamSpec) and spec.name
        assert isinstance(spec.schema, pa.Schema) and len(spec.schema)
        assert len(set(spec.schema.names)) == len(spec.schema.names)
        assert set(spec.primary_key) <= set(spec.schema.names), spec.name
        assert spec.cursor is None or spec.cursor in spec.schema.names, spec.name
        assert spec.sync_modes and set(spec.sync_modes) <= set(SYNC_MODES), spec.name
        assert not spec.emits_deletes or spec.primary_key, f"{spec.name}: deletes need a key"
        assert catalog.stream(spec.name) is spec


@pytest.mark.parametrize("incremental", [False, True], ids=["full_refresh", "incremental"])
def test_read_yields_protocol_messages_matching_the_catalog(
    source: Source, case: Case, incremental: bool
) -> None:
    read = 0
    for spec in source.discover().streams:
        stream = configured(spec, case, incremental)
        if stream is not None:
            assert_messages(spec, list(source.read(stream, None)))
            read += 1
    if not read:
        pytest.skip("no stream offers this kind of sync mode")


def test_incremental_read_resumes_from_a_checkpoint_without_repeating_records(
    source: Source, case: Case
) -> None:
    read = 0
    for spec in source.discover().streams:
        stream = configured(spec, case, incremental=True)
        if stream is None or spec.loaded_externally:  # the external system resumes itself
            continue
        first = list(source.read(stream, None))
        assert records(first), f"{spec.name}: the case should give it records to read"
        marks = [i for i, m in enumerate(first) if isinstance(m, Checkpoint)]
        for mark in sorted({marks[len(marks) // 2], marks[-1]}):
            before = set(records(first[:mark])) - set(records(first[mark:]))
            again = list(source.read(stream, first[mark].state))
            assert_messages(spec, again)
            repeated = before & set(records(again))
            assert not repeated, f"{spec.name}: resumed read repeats {sorted(repeated)[:3]}"
        read += 1
    if not read:
        pytest.skip("no stream offers an incremental sync mode")
