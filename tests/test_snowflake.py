"""The Snowflake adapter: the exact SQL it sends, types, errors, credentials, locks, dbt;
types on real Snowflake when configured.

The engine's scenarios run on Snowflake in the contract suite (``tests/contract/``,
adapter ``snowflake``; ``snowflake-real`` when ``MDSTACK_SNOWFLAKE_*`` are set).

fakesnow runs as an HTTP server in this process (``tests/snowflake_fixtures.py``) and
the real ``snowflake-connector-python`` talks to it. Where fakesnow cannot run what
real Snowflake gets (MERGE inside a transaction, ``COPY ... FILES=``), the adapter's
``fakesnow=True`` workarounds apply there, and a stub connection checks the exact
statements sent to real Snowflake instead.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
import uuid
from decimal import Decimal

import pyarrow as pa
import pytest
from pydantic import SecretStr
from snowflake.connector import errors as sf_errors

from stack import sql
from stack.errors import SyncConflict, WarehouseBusy, WarehouseError
from stack.warehouse import _snowflake_sql as sfsql
from stack.warehouse import _snowflake_types as sftypes
from stack.warehouse._snowflake_driver import translate
from stack.warehouse.snowflake import (
    SnowflakeWarehouse,
    connect_kwargs,
    private_key_der,
)
from tests.snowflake_fixtures import (
    fakesnow_target,
    open_fakesnow,
    real_snowflake,
    real_unavailable,
    recording,
    stop_fakesnow_server,
    stub_warehouse,
)


@pytest.fixture(scope="module", autouse=True)
def _fakesnow_server():
    """The fakesnow server: started by the first test that opens a warehouse, stopped here."""
    yield
    stop_fakesnow_server()


@pytest.fixture
def snowflake_wh():
    """An open warehouse on fakesnow, in a fresh database."""
    with open_fakesnow() as wh:
        yield wh


# -- rendering the engine's SQL ---------------------------------------------------------------
def test_unquoted_names_resolve_as_duckdb_does_and_quoted_ones_stay():
    rendered = sfsql.render(
        'SELECT id, "Name" FROM raw.items WHERE _mds_region = ? ORDER BY updated_at DESC'
    )
    assert rendered.sql == (
        'SELECT "id", "Name" FROM "raw"."items" WHERE "_mds_region" = ? '
        'ORDER BY "updated_at" DESC NULLS LAST'
    )
    assert not rendered.ddl and rendered.merge_parts == ()


def test_placeholder_casts_of_the_engine_parse():
    rendered = sfsql.render(
        "CREATE OR REPLACE TEMP TABLE \"r\" AS SELECT ?::VARCHAR AS a, '?::x' AS b, ?::TIMESTAMP"
    )
    assert rendered.sql == (
        'CREATE OR REPLACE TEMPORARY TABLE "r" AS SELECT CAST(? AS VARCHAR) AS "a", '
        "'?::x' AS \"b\", CAST(? AS TIMESTAMPNTZ)"
    )
    assert rendered.ddl


def test_merge_is_sent_as_is_to_snowflake_and_split_for_fakesnow():
    merge = sql.merge_sql('"raw"."items"', '"_mds_rows_items"', ["id"], "ts", ["id", "name", "ts"])
    rendered = sfsql.render(merge)
    assert rendered.sql.startswith(
        'MERGE INTO "raw"."items" AS "t" USING (SELECT * FROM "_mds_rows_items") AS "s" '
        'ON "t"."id" = "s"."id" AND "t"."_mds_region" = "s"."_mds_region" WHEN MATCHED AND '
    )
    update, insert = rendered.merge_parts
    assert update == (
        'UPDATE "raw"."items" AS "t" SET "id" = "s"."id", "name" = "s"."name", "ts" = "s"."ts", '
        '"_mds_run_id" = "s"."_mds_run_id", "_mds_loaded_at" = "s"."_mds_loaded_at", '
        '"_mds_deleted_at" = "s"."_mds_deleted_at" FROM (SELECT * FROM "_mds_rows_items") AS "s" '
        'WHERE ("t"."id" = "s"."id" AND "t"."_mds_region" = "s"."_mds_region") '
        'AND ("t"."ts" IS NULL OR "s"."ts" >= "t"."ts")'
    )
    assert insert == (
        'INSERT INTO "raw"."items" ("id", "name", "ts", "_mds_region", "_mds_run_id", '
        '"_mds_loaded_at", "_mds_deleted_at") SELECT "s"."id", "s"."name", "s"."ts", '
        '"s"."_mds_region", "s"."_mds_run_id", "s"."_mds_loaded_at", "s"."_mds_deleted_at" '
        'FROM (SELECT * FROM "_mds_rows_items") AS "s" WHERE NOT EXISTS (SELECT 1 FROM '
        '"raw"."items" AS "t" WHERE "t"."id" = "s"."id" AND "t"."_mds_region" = "s"."_mds_region")'
    )


def test_unparsable_sql_names_the_statement():
    with pytest.raises(WarehouseError, match=r"statement: SELEC 1 FROM nowhere"):
        sfsql.render("SELEC 1 FROM nowhere")


# -- the exact statements sent to real Snowflake ----------------------------------------------
_FILE = re.compile(r"[0-9a-f]{32}\.parquet")


def _normalized(statements: list[str]) -> list[str]:
    return [_FILE.sub("<file>", re.sub(r"file://\S+/", "file://<tmp>/", s)) for s in statements]


def _copied(rows: int):
    def answer(statement: str, params):
        if statement.startswith("COPY INTO"):
            return [{"file": "f", "status": "LOADED", "rows_parsed": rows, "rows_loaded": rows}]
        return []

    return answer


def test_stage_puts_one_parquet_file_and_copies_it_by_column_name():
    wh, stub = stub_warehouse(_copied(2))
    data = pa.table({"id": [1, 2], 'the "name"': ["a", None]})
    wh.stage("_mds_stage_items", data)
    assert _normalized(stub.sql()) == [
        'CREATE TEMPORARY TABLE IF NOT EXISTS "_mds_stage_items" '
        '("id" NUMBER(38,0), "the ""name""" VARCHAR)',
        'PUT \'file://<tmp>/<file>\' @"MDSTACK"."_mds_load" AUTO_COMPRESS=FALSE',
        'COPY INTO "_mds_stage_items" ("id", "the ""name""") FROM (SELECT $1:"c0"::NUMBER(38,0), '
        '$1:"c1"::VARCHAR FROM @"MDSTACK"."_mds_load") FILES=(\'<file>\') '
        "FILE_FORMAT=(TYPE=PARQUET USE_LOGICAL_TYPE=TRUE BINARY_AS_TEXT=FALSE) PURGE=TRUE",
    ]
    assert wh.stage_ref("_mds_stage_items") == '"_mds_stage_items"'


def test_append_copies_into_the_table_and_checks_the_row_count():
    wh, stub = stub_warehouse(_copied(3))
    wh.append("raw", "items", pa.table({"id": [1, 2, 3]}))
    assert _normalized(stub.sql())[1].startswith('COPY INTO "raw"."items" ("id") FROM (SELECT')
    wh, stub = stub_warehouse(_copied(1))
    with pytest.raises(WarehouseError, match="loaded 1 of 3 rows"):
        wh.append("raw", "items", pa.table({"id": [1, 2, 3]}))
    wh.append("raw", "items", pa.table({"id": pa.array([], pa.int64())}))  # nothing to send


def test_merge_runs_inside_the_transaction_on_snowflake():
    wh, stub = stub_warehouse()
    merge = sql.merge_sql('"raw"."items"', '"rows"', ["id"], None, ["id"])
    with wh.transaction(), wh.transaction():  # a nested transaction joins
        wh.execute(merge)
    assert stub.sql() == ["BEGIN TRANSACTION", sfsql.render(merge).sql, "COMMIT"]


def test_a_failing_block_rolls_back_and_keeps_its_error():
    wh, stub = stub_warehouse()
    with pytest.raises(RuntimeError, match="boom"), wh.transaction():
        wh.execute("DELETE FROM raw.items")
        raise RuntimeError("boom")
    assert stub.sql() == ["BEGIN TRANSACTION", 'DELETE FROM "raw"."items"', "ROLLBACK"]


def test_ddl_inside_a_transaction_commits_explicitly_and_says_so(caplog):
    wh, stub = stub_warehouse()
    with wh.transaction():
        wh.execute("INSERT INTO raw.items VALUES (1)")
        wh.add_columns("raw", "items", pa.schema([("color", pa.string())]))
        wh.execute("INSERT INTO raw.items VALUES (2)")
    assert stub.sql() == [
        "BEGIN TRANSACTION",
        'INSERT INTO "raw"."items" VALUES (1)',
        "COMMIT",
        'ALTER TABLE "raw"."items" ADD COLUMN IF NOT EXISTS "color" VARCHAR',
        "BEGIN TRANSACTION",
        'INSERT INTO "raw"."items" VALUES (2)',
        "COMMIT",
    ]
    assert "commits the open transaction before DDL" in caplog.text


def test_widen_alters_in_place_or_rebuilds_the_column():
    def answer(statement, params):
        if "information_schema" not in statement:
            return []
        return [
            {"name": "qty", "type": "NUMBER", "precision": 38, "scale": 0},
            {"name": "price", "type": "NUMBER", "precision": 10, "scale": 2},
            {"name": "note", "type": "TEXT", "precision": None, "scale": None},
        ]

    wh, stub = stub_warehouse(answer)
    wh.widen_columns(
        "raw",
        "items",
        pa.schema(
            [
                ("qty", pa.int64()),  # NUMBER(38,0) already: nothing to do
                ("price", pa.decimal128(18, 2)),
                ("note", pa.string()),
                ("qty", pa.float64()),
            ]
        ),
    )
    assert stub.sql()[1:] == [
        'ALTER TABLE "raw"."items" ALTER COLUMN "price" SET DATA TYPE NUMBER(18,2)',
        'ALTER TABLE "raw"."items" ADD COLUMN "qty__mds_widen" FLOAT',
        'UPDATE "raw"."items" SET "qty__mds_widen" = CAST("qty" AS FLOAT)',
        'ALTER TABLE "raw"."items" RENAME COLUMN "qty" TO "qty__mds_narrow"',
        'ALTER TABLE "raw"."items" RENAME COLUMN "qty__mds_widen" TO "qty"',
        'ALTER TABLE "raw"."items" DROP COLUMN "qty__mds_narrow"',
    ]


def test_lock_takes_a_row_in_a_transaction_and_deletes_it_on_exit():
    wh, stub = stub_warehouse()
    with wh.lock("p.eu.src.items"):
        taken = list(stub.statements)
    locks = '"MDSTACK"."_mds_locks"'
    assert [s for s, _ in taken] == [
        f'CREATE TABLE IF NOT EXISTS {locks} ("name" VARCHAR, "holder" VARCHAR, '
        '"acquired_at" TIMESTAMP_TZ, "expires_at" TIMESTAMP_TZ)',
        "BEGIN TRANSACTION",
        f'DELETE FROM {locks} WHERE "name" = ? AND "expires_at" < CURRENT_TIMESTAMP()',
        f'SELECT "holder", "expires_at" FROM {locks} WHERE "name" = ?',
        f'INSERT INTO {locks} ("name", "holder", "acquired_at", "expires_at") '
        "SELECT ?, ?, CURRENT_TIMESTAMP(), DATEADD(second, ?, CURRENT_TIMESTAMP())",
        "COMMIT",
    ]
    name, holder, ttl = taken[4][1]
    assert (name, ttl) == ("p.eu.src.items", 3600)
    assert stub.statements[-1] == (
        f'DELETE FROM {locks} WHERE "name" = ? AND "holder" = ?',
        ["p.eu.src.items", holder],
    )


def test_a_held_lock_is_refused_with_its_holder_and_lease():
    def answer(statement, params):
        if statement.startswith('SELECT "holder"'):
            return [{"holder": "host:1:abc", "expires_at": "2030-01-01 00:00:00+00:00"}]
        return []

    wh, stub = stub_warehouse(answer)
    refused = pytest.raises(SyncConflict, match=r"another run holds 'x' \(holder host:1:abc")
    with refused, wh.lock("x"):
        pass
    assert stub.sql()[-1] == "COMMIT" and not any(s.startswith("INSERT") for s in stub.sql())


# -- on fakesnow: loads, types, locks, errors -------------------------------------------------
ALL_TYPES = pa.schema(
    [
        ("i8", pa.int8()),
        ("i64", pa.int64()),
        ("f", pa.float64()),
        ("d", pa.decimal128(10, 2)),
        ("s", pa.string()),
        ("b", pa.bool_()),
        ("day", pa.date32()),
        ("ts", pa.timestamp("us")),
        ("tz", pa.timestamp("us", tz="UTC")),
        ("bin", pa.binary()),
        ("lst", pa.list_(pa.int64())),
        ("Mixed Case", pa.string()),
    ]
)
ALL_VALUES = [
    {
        "i8": 5,
        "i64": 2**40,
        "f": 1.5,
        "d": Decimal("1.25"),
        "s": "a'b\"c",
        "b": True,
        "day": dt.date(2024, 1, 2),
        "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
        "tz": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "bin": b"\x00\x01",
        "lst": [1, 2],
        "Mixed Case": "x",
    },
    dict.fromkeys(ALL_TYPES.names),
]


def test_arrow_to_snowflake_types():
    assert {f.name: sftypes.snowflake_type(f.type) for f in ALL_TYPES} == {
        "i8": "NUMBER(38,0)",
        "i64": "NUMBER(38,0)",
        "f": "FLOAT",
        "d": "NUMBER(10,2)",
        "s": "VARCHAR",
        "b": "BOOLEAN",
        "day": "DATE",
        "ts": "TIMESTAMP_NTZ",
        "tz": "TIMESTAMP_TZ",
        "bin": "BINARY",
        "lst": "VARIANT",
        "Mixed Case": "VARCHAR",
    }
    assert sftypes.snowflake_type(pa.struct([("a", pa.int8())])) == "VARIANT"
    assert sftypes.snowflake_type(pa.dictionary(pa.int32(), pa.string())) == "VARCHAR"
    with pytest.raises(Exception, match="no Snowflake type for Arrow type duration"):
        sftypes.snowflake_type(pa.duration("s"))


def test_tables_load_and_read_back_with_their_types(snowflake_wh):
    wh = snowflake_wh
    wh.create_table("raw", "all types", ALL_TYPES)
    wh.append("raw", "all types", pa.Table.from_pylist(ALL_VALUES, schema=ALL_TYPES))
    assert wh.columns("raw", "all types") == {
        "i8": "BIGINT",
        "i64": "BIGINT",
        "f": "DOUBLE",
        "d": "DECIMAL(10,2)",
        "s": "VARCHAR",
        "b": "BOOLEAN",
        "day": "DATE",
        "ts": "TIMESTAMP",
        "tz": "TIMESTAMP WITH TIME ZONE",
        "bin": "BLOB",
        "lst": "JSON",
        "Mixed Case": "VARCHAR",
    }
    got = wh.query('SELECT * FROM raw."all types" ORDER BY i8 NULLS LAST')
    assert got.schema.types == [
        pa.int64(),
        pa.int64(),
        pa.float64(),
        pa.decimal128(10, 2),
        pa.string(),
        pa.bool_(),
        pa.date32(),
        pa.timestamp("us"),
        pa.timestamp("us", tz="UTC"),
        pa.binary(),
        pa.string(),
        pa.string(),
    ]
    first, second = got.to_pylist()
    assert json.loads(first.pop("lst")) == [1, 2]
    assert first == {k: v for k, v in ALL_VALUES[0].items() if k != "lst"}
    assert second == ALL_VALUES[1]  # NULL stays NULL, timestamps too
    assert wh.columns("raw", "missing") is None


def test_an_empty_result_keeps_its_column_types(snowflake_wh):
    snowflake_wh.create_table(
        "raw", "t", pa.schema([("id", pa.int64()), ("at", pa.timestamp("us"))])
    )
    empty = snowflake_wh.query("SELECT * FROM raw.t")
    assert empty.num_rows == 0
    assert empty.schema == pa.schema([("id", pa.int64()), ("at", pa.timestamp("us"))])


def test_staging_tables_are_private_to_the_session(snowflake_wh):
    snowflake_wh.stage("_mds_stage_x", pa.table({"id": [1, 2]}))
    snowflake_wh.stage("_mds_stage_x", pa.table({"id": [3]}))
    total = snowflake_wh.query(f"SELECT sum(id) FROM {snowflake_wh.stage_ref('_mds_stage_x')}")
    assert total.column(0).to_pylist() == [6]
    other = open_fakesnow(snowflake_wh.target.database)
    with other, pytest.raises(WarehouseError, match="does not exist"):
        other.query('SELECT * FROM "_mds_stage_x"')
    snowflake_wh.drop_stage("_mds_stage_x")
    with pytest.raises(WarehouseError):
        snowflake_wh.query('SELECT * FROM "_mds_stage_x"')


def test_fakesnow_gets_merge_as_update_and_insert_inside_a_transaction(snowflake_wh):
    wh = snowflake_wh
    wh.create_table("raw", "t", pa.schema([("id", pa.int64()), ("v", pa.string())]))
    wh.execute("INSERT INTO raw.t VALUES (1, 'a')")
    wh.stage("_src", pa.table({"id": [1, 2], "v": ["a2", "b"]}))
    merge = (
        'MERGE INTO "raw"."t" AS t USING (SELECT * FROM "_src") AS s ON t.id = s.id '
        "WHEN MATCHED THEN UPDATE SET v = s.v "
        "WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v)"
    )
    with recording(wh) as sent, wh.transaction():
        wh.execute(merge)
    assert [s.split(" ")[0] for s in sent.sql()] == ["BEGIN", "UPDATE", "INSERT", "COMMIT"]
    assert wh.query("SELECT * FROM raw.t ORDER BY id").to_pylist() == [
        {"id": 1, "v": "a2"},
        {"id": 2, "v": "b"},
    ]


def test_a_rolled_back_transaction_leaves_nothing(snowflake_wh):
    wh = snowflake_wh
    wh.create_table("raw", "t", pa.schema([("id", pa.int64())]))
    with pytest.raises(RuntimeError), wh.transaction():
        wh.append("raw", "t", pa.table({"id": [1, 2]}))
        wh.execute("DELETE FROM raw.t")
        raise RuntimeError("stop")
    assert wh.query("SELECT count(*) FROM raw.t").column(0).to_pylist() == [0]


def test_locks_exclude_other_sessions_until_released_or_expired(snowflake_wh):
    database = snowflake_wh.target.database
    with open_fakesnow(database, lock_ttl=1) as other:
        with snowflake_wh.lock("p.eu.s"):
            refused = pytest.raises(SyncConflict, match=r"another run holds 'p\.eu\.s'")
            with refused, other.lock("p.eu.s"):
                pass
            with other.lock("p.us.s"):  # another name is another lock
                pass
        with other.lock("p.eu.s"):  # released
            pass
        with other.lock("p.eu.s"):
            time.sleep(1.1)  # the lease (1 s) ran out: the lock is free for others
            with snowflake_wh.lock("p.eu.s"):
                pass
            with pytest.raises(SyncConflict, match=r"lost the lock 'p\.eu\.s'"):
                other.query("SELECT 1")  # renewing finds the row gone


def test_a_bad_statement_is_a_warehouse_error_naming_it(snowflake_wh):
    with pytest.raises(WarehouseError) as err:
        snowflake_wh.query("SELECT nosuch FROM raw.nope WHERE x = ?", [1])
    message = str(err.value)
    assert "ProgrammingError 002003 (42S02)" in message
    assert 'while running: SELECT "nosuch" FROM "raw"."nope" WHERE "x" = ?' in message
    assert not err.value.retryable


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "kind", "retryable"),
    [
        (sf_errors.ProgrammingError("bad", errno=2003, sqlstate="42S02"), WarehouseError, False),
        (sf_errors.ServiceUnavailableError(msg="down"), WarehouseBusy, True),
        (sf_errors.InternalServerError(msg="500"), WarehouseBusy, True),
        (sf_errors.ProgrammingError("waiters", errno=625, sqlstate="57014"), WarehouseBusy, True),
        (sf_errors.DatabaseError("conflict", errno=1, sqlstate="40001"), WarehouseBusy, True),
        (sf_errors.OperationalError("reset", errno=250003, sqlstate="08001"), WarehouseError, True),
        (sf_errors.DatabaseError("no", errno=390100, sqlstate="28000"), WarehouseError, False),
        (sf_errors.RevocationCheckError(msg="ocsp", errno=254007), WarehouseError, False),
        (sf_errors.MissingDependencyError("pandas"), WarehouseError, False),
    ],
)
def test_driver_errors_are_classified(error, kind, retryable):
    with pytest.raises(WarehouseError) as err, translate("SELECT 1"):
        raise error
    assert type(err.value) is kind
    assert err.value.retryable is retryable
    assert err.value.__cause__ is error
    assert "while running: SELECT 1" in str(err.value)


def test_credentials_never_reach_an_error_message():
    secret = f"pw-{uuid.uuid4().hex}"
    SnowflakeWarehouse(fakesnow_target("DB", password=secret))  # registers the secret
    failure = sf_errors.DatabaseError(
        f"Incorrect password {secret}", errno=390100, sqlstate="28000"
    )
    with pytest.raises(WarehouseError) as err, translate(f"login as {secret}"):
        raise failure
    assert secret not in str(err.value) and "***" in str(err.value)
    assert "credentials" in err.value.hint


# -- connecting -------------------------------------------------------------------------------
def _rsa_pem(passphrase: bytes | None) -> tuple[str, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, der


@pytest.fixture(scope="module")
def rsa_key() -> tuple[str, bytes]:
    return _rsa_pem(b"pass-phrase-123")


def test_key_pair_passes_der_bytes_and_no_password(rsa_key):
    pem, der = rsa_key
    target = fakesnow_target(
        "DB", password=None, private_key=pem, private_key_passphrase="pass-phrase-123"
    )
    kwargs = connect_kwargs(target, {"run_id": "r1"})
    assert kwargs["authenticator"] == "SNOWFLAKE_JWT"
    assert kwargs["private_key"] == der
    assert "password" not in kwargs
    assert kwargs["paramstyle"] == "qmark"
    assert (kwargs["account"], kwargs["user"], kwargs["database"]) == ("fakesnow", "fake", "DB")
    assert (kwargs["role"], kwargs["warehouse"]) == ("fake_role", "fake_wh")
    assert json.loads(kwargs["session_parameters"]["QUERY_TAG"]) == {
        "app": "mdstack",
        "run_id": "r1",
    }
    squeezed = pem.replace("\n", "\\n")  # a PEM in one env-var line
    assert private_key_der(squeezed, "pass-phrase-123") == der


def test_an_unreadable_key_says_so_without_the_key(rsa_key):
    pem, _ = rsa_key
    with pytest.raises(WarehouseError, match="cannot read the Snowflake private key") as err:
        private_key_der(pem, "wrong")
    assert pem.splitlines()[1] not in str(err.value)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"authenticator": "oauth", "token": "tok-123456"},
            {"authenticator": "oauth", "token": "tok-123456"},
        ),
        (
            {"authenticator": "externalbrowser", "password": None},
            {"authenticator": "externalbrowser"},
        ),
        ({}, {"password": "snow"}),
    ],
)
def test_authenticators(fields, expected):
    kwargs = connect_kwargs(fakesnow_target("DB", **fields))
    assert {k: kwargs[k] for k in ("authenticator", "token", "password") if k in kwargs} == expected


def test_missing_credentials_and_secret_strings():
    with pytest.raises(WarehouseError, match="no Snowflake credentials"):
        connect_kwargs(fakesnow_target("DB", password=None))
    with pytest.raises(WarehouseError, match="oauth needs a token"):
        connect_kwargs(fakesnow_target("DB", authenticator="oauth"))
    resolved = fakesnow_target("DB").model_copy(update={"password": SecretStr("from-vault")})
    assert connect_kwargs(resolved)["password"] == "from-vault"


def test_key_pair_and_password_logins_never_log_a_secret(rsa_key, caplog):
    pem, _ = rsa_key
    caplog.set_level(logging.DEBUG)  # every logger, the connector's too
    key_pair = {"password": None, "private_key": pem, "private_key_passphrase": "pass-phrase-123"}
    for fields in (key_pair, {"password": "pw-never-logged"}):
        with open_fakesnow(target=fields) as wh:  # fakesnow accepts the JWT login
            assert wh.query("SELECT 1 AS x").to_pylist() == [{"x": 1}]
    assert "'private_key': '***'" in caplog.text and "'password': '***'" in caplog.text
    for secret in ("pass-phrase-123", "pw-never-logged", *pem.splitlines()[1:-1]):
        assert secret not in caplog.text


def test_capabilities_and_meta_schema():
    wh = SnowflakeWarehouse(fakesnow_target("DB", schema="META"))
    caps = wh.capabilities
    assert (caps.dialect, caps.clone, caps.swap, caps.concurrent_writers) == (
        "snowflake",
        True,
        True,
        True,
    )
    assert caps.max_identifier_length == 255 and wh.meta_schema == "META"
    with pytest.raises(WarehouseError, match="not open"):
        wh.query("SELECT 1")


# -- dbt --------------------------------------------------------------------------------------
def test_dbt_output_reads_credentials_from_env_vars(rsa_key):
    wh = SnowflakeWarehouse(fakesnow_target("DB", password="pw-4567"), query_tag={"run_id": "r9"})
    output = wh.dbt_output()
    assert output == {
        "type": "snowflake",
        "account": "fakesnow",
        "user": "fake",
        "role": "fake_role",
        "database": "DB",
        "warehouse": "fake_wh",
        "schema": "MDSTACK",
        "threads": 4,
        "query_tag": '{"app": "mdstack", "run_id": "r9"}',
        "client_session_keep_alive": False,
        "password": "{{ env_var('DBT_ENV_SECRET_SNOWFLAKE_PASSWORD') }}",
    }
    assert wh.dbt_env() == {"DBT_ENV_SECRET_SNOWFLAKE_PASSWORD": "pw-4567"}
    on_fakesnow = open_fakesnow().dbt_output()
    assert (on_fakesnow["host"], on_fakesnow["protocol"]) == ("127.0.0.1", "http")
    pem, _ = rsa_key
    keyed = SnowflakeWarehouse(
        fakesnow_target("DB", password=None, private_key=pem, private_key_passphrase="pp-1234")
    )
    output = keyed.dbt_output()
    assert output["private_key"] == "{{ env_var('DBT_ENV_SECRET_SNOWFLAKE_PRIVATE_KEY') }}"
    assert "password" not in output and pem not in json.dumps(output)
    assert keyed.dbt_env() == {
        "DBT_ENV_SECRET_SNOWFLAKE_PRIVATE_KEY": pem,
        "DBT_ENV_SECRET_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "pp-1234",
    }


# -- real Snowflake ---------------------------------------------------------------------------
@pytest.fixture
def real_snowflake_wh():
    """A warehouse on real Snowflake in a fresh meta schema, dropped afterwards; else skip."""
    reason = real_unavailable()
    if reason:
        pytest.skip(reason)
    with real_snowflake() as wh:
        yield wh


def test_types_round_trip_on_real_snowflake(real_snowflake_wh):
    wh = real_snowflake_wh
    wh.create_table(wh.meta_schema, "all_types", ALL_TYPES)
    wh.append(wh.meta_schema, "all_types", pa.Table.from_pylist(ALL_VALUES, schema=ALL_TYPES))
    got = wh.query(f"SELECT * FROM {sql.table(wh.meta_schema, 'all_types')} ORDER BY i8 NULLS LAST")
    first, second = got.to_pylist()
    assert json.loads(first.pop("lst")) == [1, 2]
    assert first == {k: v for k, v in ALL_VALUES[0].items() if k != "lst"}
    assert second == ALL_VALUES[1]


class _SilentCursor:
    """Accepts any statement and answers nothing: for checking the exact SQL sent."""

    def __init__(self, sent: list[str]) -> None:
        self.sent = sent
        self.description = []

    def execute(self, sql: str, params: list | None = None) -> _SilentCursor:
        self.sent.append(sql)
        return self

    def fetchall(self) -> list:
        return []


class _SilentConnection:
    def __init__(self, sent: list[str]) -> None:
        self.sent = sent

    def cursor(self) -> _SilentCursor:
        return _SilentCursor(self.sent)

    def close(self) -> None:
        pass


def test_environments_are_database_clones_published_by_swap(monkeypatch):
    """fakesnow cannot run CLONE of a database or SWAP WITH: check the exact SQL instead."""
    import stack.warehouse.snowflake as adapter

    sent: list[str] = []
    monkeypatch.setattr(
        adapter.snowflake.connector, "connect", lambda **kwargs: _SilentConnection(sent)
    )
    wh = adapter.SnowflakeWarehouse(fakesnow_target("ANALYTICS"))
    clone = wh.clone_into("audit-eu")
    assert clone.target.database == "ANALYTICS_audit-eu"
    wh.publish("audit-eu")
    wh.drop_environment("audit-eu")
    statements = [s for s in sent if "DATABASE" in s]
    assert statements == [
        'CREATE OR REPLACE DATABASE "ANALYTICS_audit-eu" CLONE "ANALYTICS"',
        'ALTER DATABASE "ANALYTICS" SWAP WITH "ANALYTICS_audit-eu"',
        'DROP DATABASE IF EXISTS "ANALYTICS_audit-eu"',
    ]
    with pytest.raises(WarehouseError, match="invalid environment name"):
        wh.environment("../x")
