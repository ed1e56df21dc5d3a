"""PostgresSource against real servers: throwaway clusters from :mod:`tests.servers.pg_server`.

Plain tests use this module's database of the session's cluster (trust auth, user
postgres) in a schema of their own; CDC tests use the cluster's ``postgres`` database
(it has ``wal_level=logical``). No mocks.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from decimal import Decimal

import psycopg
import pyarrow as pa
import pytest

from connectors import load_source
from connectors.base import (
    SOURCE_DELETED_AT,
    Batch,
    Checkpoint,
    ConfiguredStream,
    Deletes,
    Source,
)
from connectors.errors import ConnectorError, SourceUnavailable
from connectors.postgres import PostgresSource, fetch
from connectors.postgres.cdc import lsn_int
from tests.servers.pg_server import (
    PASSWORD_USER,
    PgCluster,
    connect_kwargs,
    drop_slots,
    schema_of_its_own,
)

SECRET = "s3cr3t-Pa55word"


def _connect(params: dict) -> psycopg.Connection:
    return psycopg.connect(**connect_kwargs(params), autocommit=True)


@pytest.fixture(scope="module")
def local(pg_database: dict) -> Iterator[tuple[psycopg.Connection, str]]:
    """This module's database and a fresh schema, dropped at the end."""
    with schema_of_its_own(pg_database, "mds_test") as found:
        yield found


def _source(server: dict, schema: str, **extra) -> PostgresSource:
    return PostgresSource("pg", server | {"schemas": [schema]} | extra)


def _read(source: Source, stream: str, mode: str, state=None, **kw) -> list:
    spec = source.discover().stream(stream)
    return list(source.read(ConfiguredStream(spec, mode, **kw), state))


def _rows(messages: list) -> list[dict]:
    return [row for m in messages if isinstance(m, Batch) for row in m.data.to_pylist()]


def _states(messages: list) -> list[dict]:
    return [m.state for m in messages if isinstance(m, Checkpoint)]


ALL_TYPES = """
CREATE TYPE {s}.mood AS ENUM ('sad', 'happy');
CREATE DOMAIN {s}.posint AS int4 CHECK (VALUE > 0);
CREATE TABLE {s}.t_all (
  id int8 PRIMARY KEY, i2 int2, i4 int4, n numeric(12,2), nn numeric, f4 float4, f8 float8,
  t text, vc varchar(10), ch char(3), b bool, d date, ts timestamp, tstz timestamptz,
  j json, jb jsonb, u uuid, by bytea, ia int[], iv interval, tm time, m {s}.mood, ip inet,
  p {s}.posint);
INSERT INTO {s}.t_all VALUES
 (1, 2, 3, 12.34, 1.5, 1.5, 2.5, 'tëxt', 'vc', 'ab', true, '2024-01-02',
  '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123456+02', '{{"a": 1}}', '{{"b": [1, 2]}}',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\xdeadbeef', '{{{{1,2}},{{3,4}}}}', '1 day 02:00:00',
  '12:34:56', 'happy', '10.0.0.1', 7),
 (2, NULL, NULL, NULL, 'NaN', NULL, 'Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, '{{5}}', NULL, NULL, NULL, NULL, NULL);
CREATE VIEW {s}.v_all AS SELECT * FROM {s}.t_all;
CREATE TABLE {s}.pair (a int4, b text, x float8, PRIMARY KEY (b, a));
"""

FAST_TYPES = """
CREATE TABLE {t} (
  id int8 PRIMARY KEY, i2 int2, n numeric(30,10), f4 float4, t text, vc varchar(5), b bool,
  d date, ts timestamp, tstz timestamptz, j json, jb jsonb, u uuid, by bytea, ia text[],
  tm time, m {s}.mood);
INSERT INTO {t} VALUES
 (1, -3, 12345678901234567890.0123456789, 0.1, E'multi\\nline "q" ''s''', 'ü', false,
  '1999-12-31', '1970-01-01 00:00:00', '2030-06-01 12:00:00.5-07', '[1, "x", null]',
  '{{"k": {{"n": 1.50}}}}', '00000000-0000-0000-0000-000000000001', '\\x00ff',
  '{{"a b",NULL,"c,d"}}', '23:59:59.999999', 'sad'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL);
"""


@pytest.fixture(scope="module")
def all_types(local) -> str:
    conn, schema = local
    conn.execute(ALL_TYPES.format(s=f'"{schema}"'))
    return schema


def test_discover_maps_types_and_keys(all_types, pg_database):
    catalog = _source(pg_database, all_types).discover()
    assert {"t_all", "v_all", "pair"} <= set(catalog.names)
    spec = catalog.stream("t_all")
    assert dict(zip(spec.schema.names, spec.schema.types, strict=True)) == {
        "id": pa.int64(),
        "i2": pa.int16(),
        "i4": pa.int32(),
        "n": pa.decimal128(12, 2),
        "nn": pa.float64(),
        "f4": pa.float32(),
        "f8": pa.float64(),
        "t": pa.string(),
        "vc": pa.string(),
        "ch": pa.string(),
        "b": pa.bool_(),
        "d": pa.date32(),
        "ts": pa.timestamp("us"),
        "tstz": pa.timestamp("us", "UTC"),
        "j": pa.string(),
        "jb": pa.string(),
        "u": pa.string(),
        "by": pa.binary(),
        "ia": pa.string(),
        "iv": pa.string(),
        "tm": pa.time64("us"),
        "m": pa.string(),
        "ip": pa.string(),
        "p": pa.int32(),
    }
    assert spec.primary_key == ("id",) and spec.cursor is None and not spec.emits_deletes
    assert "incremental_deduped" in spec.sync_modes
    assert catalog.stream("pair").primary_key == ("b", "a")  # the key's order, not the table's
    view = catalog.stream("v_all")
    assert view.primary_key == () and view.sync_modes == (
        "full_refresh_overwrite",
        "full_refresh_append",
    )
    only = _source(pg_database, all_types, tables=[f"{all_types}.pair"]).discover()
    assert only.names == ("pair",)


def test_full_read_equals_the_table(all_types, pg_database):
    source = _source(pg_database, all_types)
    messages = _read(source, "t_all", "full_refresh_overwrite")
    assert messages[-1] == Checkpoint("t_all", {})
    rows = sorted(_rows(messages), key=lambda r: r["id"])
    first = rows[0]
    assert first["n"] == Decimal("12.34") and first["nn"] == 1.5 and first["t"] == "tëxt"
    assert first["ch"] == "ab" and first["b"] is True and first["d"] == date(2024, 1, 2)
    assert first["ts"] == datetime(2024, 1, 2, 3, 4, 5, 123456)
    assert first["tstz"] == datetime(2024, 1, 2, 1, 4, 5, 123456, tzinfo=UTC)
    assert first["j"] == '{"a": 1}' and first["jb"] == '{"b": [1, 2]}'
    assert (
        first["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" and first["by"] == b"\xde\xad\xbe\xef"
    )
    assert first["ia"] == "{{1,2},{3,4}}" and first["iv"] == "1 day 02:00:00"
    assert first["tm"] == time(12, 34, 56) and first["m"] == "happy" and first["ip"] == "10.0.0.1"
    assert first["p"] == 7
    assert str(rows[1]["nn"]) == "nan" and rows[1]["f8"] == float("inf") and rows[1]["ia"] == "{5}"
    # the view goes through postgres_query with casts; the table through the attached scan
    view = sorted(_rows(_read(source, "v_all", "full_refresh_overwrite")), key=lambda r: r["id"])
    assert [{k: str(v) for k, v in r.items()} for r in view] == [
        {k: str(v) for k, v in r.items()} for r in rows
    ]


def test_attached_scan_and_query_path_agree(all_types, pg_database):
    conn, schema = _connect(pg_database), all_types
    conn.execute(FAST_TYPES.format(s=f'"{schema}"', t=f'"{schema}".t_fast'))
    conn.execute(f'CREATE VIEW "{schema}".v_fast AS SELECT * FROM "{schema}".t_fast')
    conn.close()
    with _connect(pg_database) as conn:
        fast = {t.name: t.fast for t in fetch.tables(conn, [schema], None, "pg")}
    assert fast["t_fast"] and not fast["v_fast"] and not fast["t_all"]
    source = _source(pg_database, schema)
    table = _rows(_read(source, "t_fast", "full_refresh_append"))  # DuckDB's attached scan
    view = _rows(_read(source, "v_fast", "full_refresh_append"))  # postgres_query + casts
    assert sorted(table, key=lambda r: r["id"]) == sorted(view, key=lambda r: r["id"])
    one = min(table, key=lambda r: r["id"])
    assert one["n"] == Decimal("12345678901234567890.0123456789")
    assert one["t"] == "multi\nline \"q\" 's'" and one["ia"] == '{"a b",NULL,"c,d"}'
    assert one["jb"] == '{"k": {"n": 1.50}}' and one["by"] == b"\x00\xff" and one["m"] == "sad"
    assert one["tstz"] == datetime(2030, 6, 1, 19, 0, 0, 500000, tzinfo=UTC)


def test_full_read_moves_only_the_columns_the_stream_names(all_types, pg_database):
    source = _source(pg_database, all_types)
    for name in ("t_all", "v_all"):  # the attached scan, and the query path
        spec = source.discover().stream(name)
        keys = dataclasses.replace(spec, schema=pa.schema([spec.schema.field("id")]))
        messages = list(source.read(ConfiguredStream(keys, "full_refresh_overwrite"), None))
        batches = [m.data for m in messages if isinstance(m, Batch)]
        assert {tuple(b.schema.names) for b in batches} == {("id",)}
        assert sorted(r["id"] for r in _rows(messages)) == sorted(
            r["id"] for r in _rows(_read(source, name, "full_refresh_overwrite"))
        )


@pytest.fixture(scope="module")
def events(local) -> tuple[psycopg.Connection, str]:
    conn, schema = local
    conn.execute(f'CREATE TABLE "{schema}".events (id int PRIMARY KEY, at timestamptz, v text)')
    # 30 rows, 3 per timestamp: runs of equal cursor values straddle the batch boundaries
    conn.execute(
        f"INSERT INTO \"{schema}\".events SELECT g, timestamptz '2024-01-01'"
        " + (g / 3) * interval '1 minute', 'v' || g FROM generate_series(0, 29) g"
    )
    conn.execute(f"INSERT INTO \"{schema}\".events VALUES (100, NULL, 'no cursor')")
    return conn, schema


def test_batches_are_bounded(events, pg_database):
    _, schema = events
    messages = _read(_source(pg_database, schema, batch_size=7), "events", "full_refresh_append")
    sizes = [m.data.num_rows for m in messages if isinstance(m, Batch)]
    assert max(sizes) <= 7 and sum(sizes) == 31


def test_incremental_read_checkpoints_between_cursor_values_and_resumes(events, pg_database):
    conn, schema = events
    source = _source(pg_database, schema, batch_size=4)
    messages = _read(source, "events", "incremental_append", cursor="at")
    assert len(_rows(messages)) == 31  # the first read takes NULL cursors too
    states = _states(messages)
    assert states[-1] == {"cursor": "2024-01-01T00:09:00+00:00"}
    # resuming from every checkpoint gives exactly the rows after it: none skipped or repeated
    seen = []
    for message in messages:
        if isinstance(message, Checkpoint) and message is not messages[-1]:
            rest = _rows(_read(source, "events", "incremental_append", message.state, cursor="at"))
            assert sorted(r["id"] for r in seen + rest) == [*range(30), 100]
        elif isinstance(message, Batch):
            seen.extend(message.data.to_pylist())
    conn.execute(
        f"INSERT INTO \"{schema}\".events VALUES (200, '2024-01-01 00:09:00+00', 'late'),"
        " (201, '2024-01-01 00:10:00+00', 'new')"
    )
    newer = _read(source, "events", "incremental_append", states[-1], cursor="at")
    assert [r["id"] for r in _rows(newer)] == [201]
    assert _states(newer)[-1] == {"cursor": "2024-01-01T00:10:00+00:00"}
    late = _read(
        _source(pg_database, schema, lookback="PT1M"),
        "events",
        "incremental_append",
        states[-1],
        cursor="at",
    )
    assert sorted(r["id"] for r in _rows(late)) == [27, 28, 29, 200, 201]
    nothing = _read(source, "events", "incremental_append", _states(newer)[-1], cursor="at")
    assert _rows(nothing) == [] and _states(nothing) == [{"cursor": "2024-01-01T00:10:00+00:00"}]


def test_nothing_new_on_an_indexed_cursor_ends_the_read_without_the_scanner(
    local, pg_database, monkeypatch
):
    """Where an index leads with the cursor, a read with nothing past its state asks the
    index, yields its state again and never starts DuckDB's scanner; a newer row is read."""
    conn, schema = local
    conn.execute(f'CREATE TABLE "{schema}".indexed (id int PRIMARY KEY, at bigint)')
    conn.execute(f'CREATE INDEX ON "{schema}".indexed (at)')
    conn.execute(f'INSERT INTO "{schema}".indexed SELECT g, g * 10 FROM generate_series(1, 20) g')
    source = _source(pg_database, schema)
    first = _read(source, "indexed", "incremental_deduped", cursor="at")
    assert len(_rows(first)) == 20 and _states(first)[-1] == {"cursor": "200"}

    def no_scanner(*args, **kwargs):
        raise AssertionError("the scanner was started")

    monkeypatch.setattr(fetch, "Scanner", no_scanner)
    nothing = _read(source, "indexed", "incremental_deduped", {"cursor": "200"}, cursor="at")
    assert nothing == [Checkpoint("indexed", {"cursor": "200"})]
    conn.execute(f'INSERT INTO "{schema}".indexed VALUES (21, 210)')
    with pytest.raises(AssertionError, match="scanner was started"):
        _read(source, "indexed", "incremental_deduped", {"cursor": "200"}, cursor="at")
    monkeypatch.undo()
    newer = _read(source, "indexed", "incremental_deduped", {"cursor": "200"}, cursor="at")
    assert [r["id"] for r in _rows(newer)] == [21] and _states(newer)[-1] == {"cursor": "210"}


def test_incremental_without_a_cursor_says_how_to_fix(events, pg_database):
    _, schema = events
    with pytest.raises(ConnectorError, match="cursor") as err:
        _read(_source(pg_database, schema), "events", "incremental_append")
    assert "stack.yml" in err.value.hint


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"port": "x"}, "port"),
        ({"colour": "red"}, "colour"),
        ({"lookback": "one hour"}, "lookback"),
        ({"replication": {"plugin": "wal2json"}}, "replication.plugin"),
        ({"schemas": []}, "schemas"),
        ({"readers": 0}, "readers"),
        ({"readers": "4"}, "readers"),
    ],
)
def test_bad_config_names_the_key(config, key, pg_database):
    source = PostgresSource("pg", pg_database | config)
    result = source.check()
    assert not result.ok and key in result.message
    with pytest.raises(ConnectorError) as err:
        source.discover()
    assert err.value.key == key and err.value.hint


def test_registered_and_check_ok(pg_database):
    source = load_source("postgres", "pg", pg_database)
    assert isinstance(source, PostgresSource)
    result = source.check()
    assert result.ok and "127.0.0.1:{port}/{database}".format(**pg_database) in result.message


def test_unreachable_server_is_retryable_and_hides_the_password(pg_database):
    source = PostgresSource(
        "pg", pg_database | {"port": 1, "password": SECRET, "connect_timeout": 2}
    )
    with pytest.raises(SourceUnavailable) as err:
        source.discover()
    assert err.value.retryable and SECRET not in str(err.value)
    result = source.check()
    assert not result.ok and SECRET not in result.message and "unavailable" in result.message


def test_a_short_password_does_not_mask_the_rest_of_an_error(pg_database):
    """A one-letter password is no secret worth masking: every "o" of the message stays."""
    source = PostgresSource("pg", pg_database | {"database": "no_such_db_x", "password": "o"})
    with pytest.raises(ConnectorError) as err:
        source.discover()
    assert 'database "no_such_db_x" does not exist' in str(err.value)


def test_unknown_database_is_not_retryable(pg_database):
    source = PostgresSource("pg", pg_database | {"database": "no_such_db_x", "password": SECRET})
    with pytest.raises(ConnectorError) as err:
        source.discover()
    assert not err.value.retryable and SECRET not in str(err.value) and "database" in err.value.hint


def test_missing_wal_level_gives_the_fix_sql(pg_replica: PgCluster):
    with _connect(pg_replica.dsn) as conn:
        assert conn.execute("SHOW wal_level").fetchone()[0] == "replica"
        conn.execute("CREATE TABLE IF NOT EXISTS events (id int PRIMARY KEY, at timestamptz)")
    source = _source(pg_replica.dsn, "public", replication={"publication": "mds_none"})
    with pytest.raises(ConnectorError) as err:
        _read(source, "events", "incremental_deduped")
    assert "ALTER SYSTEM SET wal_level = logical" in err.value.hint
    assert "ALTER SYSTEM SET wal_level = logical" in source.check().message


# CDC: a throwaway cluster with wal_level=logical -------------------------------------------


@pytest.fixture
def cdc(pg_logical: PgCluster) -> Iterator[tuple[psycopg.Connection, str, dict]]:
    """A table ``items`` in its own schema and a publication for it, in the logical cluster."""
    conn = _connect(pg_logical.dsn)
    schema = f"cdc_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(f"CREATE TABLE {schema}.items (id int PRIMARY KEY, name text, price numeric(8,2))")
    conn.execute(
        f"INSERT INTO {schema}.items SELECT g, 'item ' || g, g FROM generate_series(1, 5) g"
    )
    conn.execute(f"CREATE PUBLICATION {schema} FOR TABLE {schema}.items")
    config = pg_logical.dsn | {
        "schemas": [schema],
        "replication": {"slot": schema, "publication": schema},
    }
    try:
        yield conn, schema, config
    finally:
        drop_slots(conn, schema)
        conn.close()


def _slot_lsn(conn: psycopg.Connection, schema: str) -> str:
    return conn.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (schema,),  # the source's one slot: ``replication.slot`` itself
    ).fetchone()[0]


def _group(source: PostgresSource, states: dict, held: list | None = None, **kw) -> list:
    """A shared read of the streams of ``states`` (name -> state); ``held``: every stream's
    committed state (default: those of ``states``)."""
    catalog = source.discover()
    streams = [ConfiguredStream(catalog.stream(n), "incremental_deduped", **kw) for n in states]
    committed = [s for s in states.values() if s] if held is None else held
    return list(source.read_group(streams, states, lambda: committed))


def _deletes(messages: list) -> list[dict]:
    return [row for m in messages if isinstance(m, Deletes) for row in m.keys.to_pylist()]


def test_cdc_snapshot_then_changes_with_deletes(cdc):
    conn, schema, config = cdc
    source = PostgresSource("pg", config)
    assert source.check().ok
    spec = source.discover().stream("items")
    assert spec.emits_deletes and spec.primary_key == ("id",)
    snapshot = _read(source, "items", "incremental_deduped")
    assert sorted(r["id"] for r in _rows(snapshot)) == [1, 2, 3, 4, 5]
    states = _states(snapshot)
    state = states[-1]
    start = _slot_lsn(conn, schema)
    # copying, the state says how far; copied, it is the LSN its changes are read from
    assert states[0] == {"lsn": states[0]["lsn"], "snapshot": {"after": None}}
    assert set(state) == {"lsn"} and lsn_int(state["lsn"]) >= lsn_int(start)

    conn.execute(f"INSERT INTO {schema}.items VALUES (6, 'six', 6.5)")
    conn.execute(f"UPDATE {schema}.items SET price = 9.99 WHERE id = 2")
    conn.execute(f"DELETE FROM {schema}.items WHERE id = 3")
    with conn.transaction():  # several changes to one key: the last one wins
        conn.execute(f"INSERT INTO {schema}.items VALUES (7, 'seven', 7)")
        conn.execute(f"DELETE FROM {schema}.items WHERE id = 7")
        conn.execute(f"DELETE FROM {schema}.items WHERE id = 4")
        conn.execute(f"INSERT INTO {schema}.items VALUES (4, 'four again', 4.4)")
    changes = _read(source, "items", "incremental_deduped", state)
    rows = {r["id"]: r for r in _rows(changes)}
    assert rows == {
        6: {"id": 6, "name": "six", "price": Decimal("6.50")},
        2: {"id": 2, "name": "item 2", "price": Decimal("9.99")},
        4: {"id": 4, "name": "four again", "price": Decimal("4.40")},
    }
    deletes = _deletes(changes)
    assert sorted(d["id"] for d in deletes) == [3, 7]
    assert all(
        isinstance(d[SOURCE_DELETED_AT], datetime) and d[SOURCE_DELETED_AT].tzinfo is None
        for d in deletes
    )
    [batch] = [m for m in changes if isinstance(m, Deletes)]
    assert batch.keys.schema.names == ["id", SOURCE_DELETED_AT]
    assert batch.keys.schema.field(SOURCE_DELETED_AT).type == pa.timestamp("us")
    new_state = _states(changes)[-1]

    # not committed yet: the slot stays, and the same state yields the same changes again
    assert _slot_lsn(conn, schema) == start
    again = _read(source, "items", "incremental_deduped", state)
    assert _rows(again) == _rows(changes) and _deletes(again) == deletes

    # the next shared read starts from the committed state: the slot moves there first
    conn.execute(f"UPDATE {schema}.items SET name = 'FIVE' WHERE id = 5")
    later = _group(source, {"items": new_state})
    assert _slot_lsn(conn, schema) == new_state["lsn"]
    assert _rows(later) == [{"id": 5, "name": "FIVE", "price": Decimal("5.00")}]
    assert _deletes(later) == []


def test_cdc_key_change_and_unchanged_toast(cdc):
    conn, schema, config = cdc
    conn.execute(f"ALTER TABLE {schema}.items ADD COLUMN blob text")
    big = uuid.uuid4().hex * 400  # 12.8 kB of hex: stored out of line (TOAST)
    conn.execute(f"UPDATE {schema}.items SET blob = %s WHERE id = 1", (big,))
    source = PostgresSource("pg", config | {"batch_size": 1})
    state = _states(_read(source, "items", "incremental_deduped"))[-1]
    conn.execute(f"UPDATE {schema}.items SET price = 1.11 WHERE id = 1")  # blob not sent
    conn.execute(f"UPDATE {schema}.items SET id = 50 WHERE id = 2")
    changes = _read(source, "items", "incremental_deduped", state)
    rows = {r["id"]: r for r in _rows(changes)}
    assert rows[1]["blob"] == big and rows[1]["price"] == Decimal("1.11")
    assert rows[50]["name"] == "item 2" and [d["id"] for d in _deletes(changes)] == [2]
    assert len(_states(changes)) >= 2  # batch_size 1: a checkpoint per transaction


@pytest.mark.parametrize("slow", [False, True], ids=["attached-scan", "query-path"])
def test_cdc_changes_have_the_snapshot_types_and_values(cdc, slow):
    conn, schema, config = cdc
    conn.execute(f"CREATE TYPE {schema}.mood AS ENUM ('sad', 'happy')")
    conn.execute(FAST_TYPES.format(s=schema, t=f"{schema}.typed"))
    if slow:  # types the attached scan does not read exactly
        conn.execute(f"ALTER TABLE {schema}.typed ADD COLUMN iv interval DEFAULT '1 mon 2 days'")
        conn.execute(f"ALTER TABLE {schema}.typed ADD COLUMN nn numeric DEFAULT 'NaN'")
        conn.execute(f"ALTER TABLE {schema}.typed ADD COLUMN ch char(4) DEFAULT 'ab'")
        conn.execute(f"ALTER TABLE {schema}.typed ADD COLUMN ip inet DEFAULT '10.1.2.3'")
    conn.execute(f"ALTER PUBLICATION {schema} ADD TABLE {schema}.typed")
    [table] = fetch.tables(conn, [schema], ["typed"], "pg")
    assert table.fast is not slow
    source = PostgresSource("pg", config)
    snapshot = _read(source, "typed", "incremental_deduped")
    conn.execute(f"UPDATE {schema}.typed SET id = id")  # every row again, through the WAL
    changes = _read(source, "typed", "incremental_deduped", _states(snapshot)[-1])
    by_id = lambda rows: sorted(rows, key=lambda r: r["id"])  # noqa: E731
    assert [str(r) for r in by_id(_rows(changes))] == [str(r) for r in by_id(_rows(snapshot))]
    [batch] = [m.data for m in changes if isinstance(m, Batch)]
    assert batch.schema == source.discover().stream("typed").schema


def test_cdc_big_transaction_comes_in_bounded_batches_and_one_checkpoint(cdc):
    conn, schema, config = cdc
    source = PostgresSource("pg", config | {"batch_size": 2})
    state = _states(_read(source, "items", "incremental_deduped"))[-1]
    conn.execute(f"INSERT INTO {schema}.items SELECT g, 'n', g FROM generate_series(10, 14) g")
    changes = _read(source, "items", "incremental_deduped", state)
    kinds = [type(m).__name__ for m in changes]
    assert kinds == ["Batch", "Batch", "Batch", "Checkpoint", "Checkpoint"]
    assert [r["id"] for r in _rows(changes)] == [10, 11, 12, 13, 14]
    # once that state is committed, an older one proves nothing: the read refuses it
    _group(source, {"items": _states(changes)[-1]})
    with pytest.raises(ConnectorError, match="behind") as err:
        _read(source, "items", "incremental_deduped", state)
    assert "snapshot" in err.value.hint


def _more(conn: psycopg.Connection, schema: str) -> None:
    """A second CDC table, ``more``, in the same publication."""
    conn.execute(f"CREATE TABLE {schema}.more (id int PRIMARY KEY, name text)")
    conn.execute(f"ALTER PUBLICATION {schema} ADD TABLE {schema}.more")


def _of(messages: list, stream: str) -> list:
    return [m for m in messages if m.stream == stream]


def test_cdc_streams_at_different_positions_each_get_every_change_once(cdc):
    conn, schema, config = cdc
    _more(conn, schema)
    source = PostgresSource("pg", config)
    snap = _group(source, {"items": None, "more": None})
    states = {name: _states(_of(snap, name))[-1] for name in ("items", "more")}
    with conn.transaction():
        conn.execute(f"INSERT INTO {schema}.items VALUES (6, 'six', 6)")
        conn.execute(f"INSERT INTO {schema}.more VALUES (1, 'one')")
    first = _group(source, states)
    # as after a crash between the two streams' commits: items committed, more did not
    items_at = _states(_of(first, "items"))[-1]
    with conn.transaction():
        conn.execute(f"UPDATE {schema}.items SET name = 'SIX' WHERE id = 6")
        conn.execute(f"INSERT INTO {schema}.more VALUES (2, 'two')")
    second = _group(source, {"items": items_at, "more": states["more"]})
    assert _rows(_of(second, "items")) == [{"id": 6, "name": "SIX", "price": Decimal("6.00")}]
    assert sorted(r["id"] for r in _rows(_of(second, "more"))) == [1, 2]
    # a stream read alone peeks the same slot and releases nothing
    before = _slot_lsn(conn, schema)
    _read(source, "more", "incremental_deduped", _states(_of(second, "more"))[-1])
    assert _slot_lsn(conn, schema) == before


def test_cdc_windows_of_all_streams_share_the_batch_size(cdc):
    conn, schema, config = cdc
    _more(conn, schema)
    source = PostgresSource("pg", config | {"batch_size": 2})
    snap = _group(source, {"items": None, "more": None})
    states = {name: _states(_of(snap, name))[-1] for name in ("items", "more")}
    with conn.transaction():  # one transaction: data comes early, checkpoints at its commit
        conn.execute(f"INSERT INTO {schema}.items SELECT g, 'n', g FROM generate_series(10, 14) g")
        conn.execute(f"INSERT INTO {schema}.more SELECT g, 'm' FROM generate_series(1, 5) g")
    changes = _group(source, states)
    assert max(m.data.num_rows for m in changes if isinstance(m, Batch)) <= 2
    assert [r["id"] for r in _rows(_of(changes, "items"))] == [10, 11, 12, 13, 14]
    assert [r["id"] for r in _rows(_of(changes, "more"))] == [1, 2, 3, 4, 5]
    for name in ("items", "more"):  # each checkpoints at the commit, after all of its rows
        kinds = [type(m).__name__ for m in _of(changes, name)]
        assert kinds[-2:] == ["Checkpoint", "Checkpoint"] and "Checkpoint" not in kinds[:-2]


def test_cdc_prerequisites_say_what_to_run(cdc):
    conn, schema, config = cdc
    conn.execute(f"CREATE TABLE {schema}.nokey (a int, b text)")
    conn.execute(f"ALTER PUBLICATION {schema} ADD TABLE {schema}.nokey")
    source = PostgresSource("pg", config)
    with pytest.raises(ConnectorError) as err:
        _read(source, "nokey", "incremental_append", primary_key=("a",))
    assert f'ALTER TABLE "{schema}"."nokey" REPLICA IDENTITY FULL;' in err.value.hint
    conn.execute(f"CREATE TABLE {schema}.other (id int PRIMARY KEY)")
    role = f"{schema}_reader"  # may read and replicate, owns neither table nor publication
    conn.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
    conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    reader = PostgresSource("pg", config | {"user": role})
    with pytest.raises(ConnectorError) as err:
        _read(reader, "other", "incremental_deduped")
    assert f'ALTER PUBLICATION "{schema}" ADD TABLE "{schema}"."other";' in err.value.hint
    slot = config["replication"]["slot"]
    renamed = config | {"user": role, "replication": {"slot": slot, "publication": "nope"}}
    missing = PostgresSource("pg", renamed)
    with pytest.raises(ConnectorError) as err:
        _read(missing, "items", "incremental_deduped")
    assert 'CREATE PUBLICATION "nope" FOR TABLE' in err.value.hint
    assert 'CREATE PUBLICATION "nope"' in missing.check().message
    conn.execute(f"DROP OWNED BY {role}")
    conn.execute(f"DROP ROLE {role}")


def test_cdc_a_new_stream_joins_the_publication_when_the_role_owns_it(cdc):
    conn, schema, config = cdc
    conn.execute(f"CREATE TABLE {schema}.later (id int PRIMARY KEY, v text)")
    conn.execute(f"INSERT INTO {schema}.later VALUES (1, 'one')")
    source = PostgresSource("pg", config)
    state = _states(_read(source, "later", "incremental_deduped"))[-1]
    published = conn.execute(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1", (schema,)
    ).fetchall()
    assert published == [("items",), ("later",)]
    conn.execute(f"UPDATE {schema}.later SET v = 'uno'")
    changes = _read(source, "later", "incremental_deduped", state)
    assert _rows(changes) == [{"id": 1, "v": "uno"}]
    owned = config | {"replication": {"slot": f"{schema}_own", "publication": f"{schema}_own"}}
    made = PostgresSource("pg", owned)  # a missing publication is created for its tables
    assert [r["id"] for r in _rows(_read(made, "later", "incremental_deduped"))] == [1]
    tables = "SELECT count(*) FROM pg_publication_tables WHERE pubname = %s"
    assert conn.execute(tables, (f"{schema}_own",)).fetchone() == (1,)
    conn.execute(f"DROP PUBLICATION {schema}_own")


def test_cdc_truncate_asks_for_a_new_snapshot(cdc):
    conn, schema, config = cdc
    source = PostgresSource("pg", config)
    state = _states(_read(source, "items", "incremental_deduped"))[-1]
    conn.execute(f"TRUNCATE {schema}.items")
    with pytest.raises(ConnectorError, match="truncated") as err:
        _read(source, "items", "incremental_deduped", state)
    assert "snapshot" in err.value.hint


def test_wrong_password_is_not_retryable_and_never_shown(pg_logical):
    conn = _connect(pg_logical.dsn)
    conn.execute(f"DROP ROLE IF EXISTS {PASSWORD_USER}")
    conn.execute(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD 'right-one'")
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PASSWORD_USER} AUTHORIZATION {PASSWORD_USER}")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {PASSWORD_USER}.t AS SELECT 1 AS x")
    conn.execute(f"GRANT SELECT ON {PASSWORD_USER}.t TO {PASSWORD_USER}")
    config = pg_logical.dsn | {"user": PASSWORD_USER, "schemas": [PASSWORD_USER]}
    good = PostgresSource("pg", config | {"password": "right-one"})
    assert good.check().ok
    assert _rows(_read(good, "t", "full_refresh_append")) == [{"x": 1}]  # DuckDB gets it too
    bad = PostgresSource("pg", config | {"password": SECRET})
    with pytest.raises(ConnectorError) as err:
        bad.discover()
    assert not err.value.retryable and SECRET not in str(err.value)
    assert "password" in err.value.hint
    assert SECRET not in bad.check().message
