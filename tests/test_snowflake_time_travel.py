"""Snowflake's time travel as mdstack's versions: a run records Snowflake's clock, and
``sql --as-of`` / ``clone --as-of`` read the warehouse at that time.

fakesnow has no time travel (``AT`` fails there: "Catalog type does not support time
travel"), so what runs on fakesnow is what it can run (the clock, the ledger, what a
version's time literal means) and the statements real Snowflake gets are checked
exactly on a stub connection. With ``MDSTACK_SNOWFLAKE_*`` set, the last tests run the
round trip on real Snowflake.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
import sqlglot
from snowflake.connector import errors as sf_errors
from sqlglot import exp

from stack.errors import WarehouseError
from stack.load import ledger
from stack.sql import ident, table
from stack.warehouse import _snowflake_sql as sfsql
from stack.warehouse import _snowflake_time_travel as travel
from stack.warehouse import _snowflake_versions as versions
from stack.warehouse import snowflake as adapter
from stack.warehouse.snowflake import SnowflakeWarehouse
from tests.snowflake_fixtures import (
    StubConnection,
    open_fakesnow,
    real_snowflake,
    real_unavailable,
    stub_warehouse,
)

VERSION = 1796644189632  # 2026-12-07T11:49:49.632Z
STAMP = "CAST('2026-12-07T11:49:49.632+00:00' AS TIMESTAMPTZ)"


def test_every_table_and_view_a_query_reads_is_read_at_the_version():
    query = """
        WITH recent AS (SELECT id FROM raw.orders WHERE day > '2026-12-01')
        SELECT c.id, (SELECT count(*) FROM marts.daily d WHERE d.id = c.id) AS n
        FROM raw.customers_current c JOIN recent USING (id)
        WHERE c.id IN (SELECT id FROM "Raw"."Refunds")
        UNION ALL SELECT id, 0 FROM orders
        UNION ALL SELECT 1, count(*) FROM information_schema.tables
    """
    tree = sqlglot.parse_one(travel.as_of_query(sfsql.parse(query), VERSION), read="snowflake")
    when = {".".join(p.name for p in t.parts): t.args.get("when") for t in tree.find_all(exp.Table)}
    read = {
        name: (w and f"{w.this} {w.args['kind']} {w.expression.this}") for name, w in when.items()
    }
    at = "AT TIMESTAMP '2026-12-07T11:49:49.632+00:00'"
    assert read == {
        "raw.orders": at,
        "marts.daily": at,
        "raw.customers_current": at,  # a view: Snowflake reads its tables as they were
        "recent": None,  # the query's own CTE
        "Raw.Refunds": at,
        "orders": at,  # unqualified: the session's schema
        "information_schema.tables": None,  # the catalog has no past
    }


@pytest.mark.parametrize(
    ("query", "sent"),
    [
        (  # a CTE of an inner scope named like a table of the outer one
            "SELECT * FROM (WITH orders AS (SELECT 1 AS id) SELECT * FROM orders) x, orders",
            'SELECT * FROM (WITH "orders" AS (SELECT 1 AS "id") SELECT * FROM "orders") AS "x", '
            '"orders" @',
        ),
        (  # a CTE reading the table it shadows
            "WITH orders AS (SELECT * FROM orders) SELECT * FROM orders",
            'WITH "orders" AS (SELECT * FROM "orders" @) SELECT * FROM "orders"',
        ),
        (
            "SELECT * FROM raw.t WHERE EXISTS (SELECT 1 FROM raw.u WHERE u.id = t.id)",
            'SELECT * FROM "raw"."t" @ WHERE EXISTS(SELECT 1 FROM "raw"."u" @ WHERE "u"."id" = '
            '"t"."id")',
        ),
        (
            "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
            "SELECT * FROM r, raw.z",
            'WITH RECURSIVE "r" AS (SELECT 1 AS "n" UNION ALL SELECT "n" + 1 FROM "r" '
            'WHERE "n" < 3) SELECT * FROM "r", "raw"."z" @',
        ),
        (  # the query's own time travel; the account's usage views, which have no past
            "SELECT * FROM raw.t AT (OFFSET => -60) JOIN snowflake.account_usage.query_history q "
            "ON true",
            'SELECT * FROM "raw"."t" AT (OFFSET => -60) JOIN "snowflake"."account_usage".'
            '"query_history" AS "q" ON TRUE',
        ),
        (
            "SELECT * FROM raw.t a JOIN raw.t b USING (id), range(3) n",
            'SELECT * FROM "raw"."t" @ AS "a" JOIN "raw"."t" @ AS "b" USING ("id"), '
            'ARRAY_GENERATE_RANGE(0, 3) AS "n"',
        ),
    ],
)
def test_a_query_reads_each_table_of_each_scope_at_the_version(query, sent):
    at = f"AT (TIMESTAMP => {STAMP})"
    assert travel.as_of_query(sfsql.parse(query), VERSION) == sent.replace(" @", f" {at}")


def test_only_a_query_runs_as_of_a_version():
    for statement in (
        "DELETE FROM raw.t",
        "INSERT INTO raw.t VALUES (1)",
        "CREATE TABLE x (a INT)",
    ):
        with pytest.raises(WarehouseError, match="only a query") as refused:
            travel.as_of_query(sfsql.parse(statement), VERSION)
        assert "clone ENV --as-of" in (refused.value.hint or "")


def test_a_versions_time_literal_carries_its_offset():
    """The time travel gets is the version, its offset written out (so a session's
    TIMEZONE, which fakesnow cannot set, has nothing to move)."""
    stamp = travel.at(VERSION).expression.sql("snowflake")
    assert stamp == STAMP
    with open_fakesnow() as wh:
        [row] = wh.query(f"SELECT DATE_PART(EPOCH_MILLISECOND, {stamp}) AS ms").to_pylist()
    assert row["ms"] == VERSION
    assert travel.millis(datetime(2026, 12, 7, 11, 49, 49, 632000)) == VERSION  # naive: UTC
    zoned = datetime(2026, 12, 7, 12, 49, 49, 632000, tzinfo=UTC) - timedelta(hours=1)
    assert travel.millis(zoned) == VERSION


def test_a_run_records_snowflakes_clock_as_the_version_it_left():
    with open_fakesnow() as wh:
        first_before = int(time.time() * 1000)
        assert ledger.record_snapshot(wh, ("r1", "shop", "eu"), datetime.now(UTC)) is None
        time.sleep(0.01)
        previous = ledger.record_snapshot(wh, ("r2", "shop", "eu"), datetime.now(UTC))
        after = int(time.time() * 1000)
        first, second = (ledger.run_snapshot(wh, "shop", run) for run in ("r1", "r2"))
        rows = wh.query(f"SELECT * FROM {table(wh.meta_schema, ledger.SNAPSHOTS_TABLE)}")
    assert previous == "r1"
    assert first is not None and second is not None
    assert first_before - 5000 <= first < second <= after + 5000  # fakesnow's clock is ours
    assert rows.num_rows == 2


def test_reading_as_of_a_version_sends_each_query_at_its_time_and_writes_nothing():
    wh, _ = stub_warehouse()
    reader, stub = wh.as_of(VERSION), StubConnection()
    reader._con = stub
    reader.query("SELECT id, name FROM raw.items WHERE id > ?", [3])
    assert stub.statements == [
        (
            f'SELECT "id", "name" FROM "raw"."items" AT (TIMESTAMP => {STAMP}) WHERE "id" > ?',
            [3],
        )
    ]
    with pytest.raises(WarehouseError, match="cannot write"):
        reader.execute("DELETE FROM raw.items")
    assert len(stub.statements) == 1


def test_a_time_is_its_own_version_up_to_now():
    now = VERSION + 60_000
    wh, stub = stub_warehouse(lambda sql, params: [{"ms": now}] if "EPOCH" in sql else [])
    assert wh.current_snapshot() == now
    assert wh.snapshot_at(datetime(2026, 12, 7, 11, 49, 49, 632000)) == VERSION
    assert wh.snapshot_at(datetime(2027, 1, 1, tzinfo=UTC)) == now  # the future: now
    assert stub.sql() == [travel.NOW_SQL] * 3


def test_a_clone_as_of_a_version_keeps_the_published_ledger_it_replaces(monkeypatch):
    def answer(sql: str, params: list | None) -> list[dict]:
        if "information_schema.tables" in sql:
            return [{"table_name": "_mds_runs"}, {"table_name": "_mds_state"}]
        if "HASH_AGG" in sql:
            return [{"runs": 11, "state": -22}]
        return []

    wh, stub = stub_warehouse(answer)
    monkeypatch.setattr(adapter.snowflake.connector, "connect", lambda **kwargs: stub)
    clone = wh.clone_into("restore", as_of=VERSION)
    assert clone.target.database == "DB_restore"
    base = '"DB_restore"."MDSTACK"."_mds_restore_base"'
    hashed = [s for s, _ in stub.statements if "HASH_AGG" in s]
    assert hashed and all('"DB"' in s for s in hashed)  # the published database's
    made = stub.sql().index(
        f'CREATE OR REPLACE DATABASE "DB_restore" CLONE "DB" AT (TIMESTAMP => {STAMP})'
    )
    assert made > stub.sql().index(hashed[-1])  # hashed before: a write in between counts
    assert stub.statements[made + 1 :] == [
        ('CREATE SCHEMA IF NOT EXISTS "DB_restore"."MDSTACK"', None),
        (f'CREATE OR REPLACE TABLE {base} ("ledger_table" VARCHAR, "hash" NUMBER(38, 0))', None),
        (f"INSERT INTO {base} VALUES (?, ?)", ["_mds_runs", 11]),
        (f"INSERT INTO {base} VALUES (?, ?)", ["_mds_state", -22]),
        (sfsql.table_exists_sql("DB_restore", "_mds_locks"), ["MDSTACK"]),
        ('DELETE FROM "DB_restore"."MDSTACK"."_mds_locks"', None),  # the version's locks
    ]


def test_a_time_past_the_retention_says_which_setting_keeps_it():
    def answer(sql: str, params: list | None) -> list[dict]:
        raise sf_errors.ProgrammingError(
            msg="Time travel data is not available for table ITEMS. The requested time is "
            "either beyond the allowed time travel period or before the object creation time.",
            errno=707,
            sqlstate="02000",
        )

    wh, _ = stub_warehouse()
    reader = wh.as_of(VERSION)
    reader._con = StubConnection(answer)
    with pytest.raises(WarehouseError, match="not available") as refused:
        reader.query("SELECT * FROM raw.items")
    assert "DATA_RETENTION_TIME_IN_DAYS" in (refused.value.hint or "")


# -- kept versions (retention:) -----------------------------------------------------------------
def account(kept: list[int], refuses: str = "") -> Any:
    """Answers like a Snowflake account holding database DB, its kept versions and the
    ledger tables; a statement containing ``refuses`` fails as Snowflake would."""

    def answer(sql: str, params: list | None) -> list[dict]:
        if refuses and refuses in sql:
            raise sf_errors.ProgrammingError(msg="refused", errno=2003, sqlstate="42501")
        if "information_schema.databases" in sql:
            assert params == ["DB$V"], params  # only this database's versions
            return [{"database_name": f"DB$V{v}"} for v in kept]
        if "information_schema.tables" in sql:
            return [{"table_name": "_mds_runs"}]
        if "HASH_AGG" in sql:
            return [{"runs": 11}]
        return []

    return answer


def test_with_retention_a_run_keeps_its_version_as_a_clone_at_that_time():
    wh, stub = stub_warehouse(account([]), retention="7d")
    wh.keep_version(VERSION)
    kept = f'"DB$V{VERSION}"'
    assert stub.sql() == [
        f'CREATE DATABASE IF NOT EXISTS {kept} CLONE "DB" AT (TIMESTAMP => {STAMP})',
        'USE DATABASE "DB"',  # Snowflake makes a database it creates the current one
        'USE SCHEMA "MDSTACK"',
    ]
    assert wh.capabilities.diff  # between kept versions
    plain, sent = stub_warehouse(account([]))
    plain.keep_version(VERSION)  # no retention: time travel alone
    assert sent.sql() == [] and not plain.capabilities.diff


def test_with_retention_a_time_reads_the_last_version_kept_by_then():
    hour = 3_600_000
    kept = [VERSION - 2 * hour, VERSION]
    now = {"ms": VERSION + hour}

    def answer(sql: str, params: list | None) -> list[dict]:
        return [now] if "EPOCH" in sql else account(kept)(sql, params)

    wh, _ = stub_warehouse(answer, retention="7d")
    moment = datetime.fromtimestamp((VERSION - hour) / 1000, UTC)
    assert wh.snapshot_at(moment) == VERSION - 2 * hour
    assert wh.snapshot_at(datetime.fromtimestamp(VERSION / 1000, UTC)) == VERSION
    assert wh.snapshot_at(datetime(2020, 1, 1)) is None  # before any kept version
    plain, _ = stub_warehouse(answer)
    assert plain.snapshot_at(moment) == VERSION - hour  # time travel: the moment itself


def test_a_version_that_cannot_be_kept_leaves_the_run_on_the_published_database(caplog):
    wh, stub = stub_warehouse(account([], refuses=" AT (TIMESTAMP"), retention="7d")
    wh.keep_version(VERSION)  # no time travel on the database: kept as it is now
    assert stub.sql()[1] == f'CREATE DATABASE IF NOT EXISTS "DB$V{VERSION}" CLONE "DB"'
    denied, sent = stub_warehouse(account([], refuses="CREATE DATABASE"), retention="7d")
    denied.keep_version(VERSION)  # no privilege to create databases: a warning, not a failure
    assert f"version {VERSION} is not kept" in caplog.text
    assert sent.sql()[-2:] == ['USE DATABASE "DB"', 'USE SCHEMA "MDSTACK"']


def test_a_runs_record_asks_to_keep_the_version_it_records(caplog):
    with open_fakesnow(target={"retention": "7d"}) as wh:
        ledger.record_snapshot(wh, ("r1", "shop", "eu"), datetime.now(UTC))
        version = ledger.run_snapshot(wh, "shop", "r1")
    assert f"version {version} is not kept" in caplog.text  # fakesnow cannot clone databases


def test_a_kept_version_is_read_in_its_database_and_nothing_is_written(monkeypatch):
    wh, stub = stub_warehouse(account([VERSION - 1, VERSION]))
    monkeypatch.setattr(adapter.snowflake.connector, "connect", lambda **kwargs: stub)
    with wh.as_of(VERSION) as reader:
        reader.query("SELECT id FROM raw.items")
        reader.query('SELECT id FROM "DB".raw.items JOIN "OTHER".raw.x USING (id)')
        with pytest.raises(WarehouseError, match="only a query"):
            reader.query("DELETE FROM raw.items")
        for write in (
            lambda: reader.execute("DELETE FROM raw.items"),
            lambda: reader.create_table("raw", "t", pa.schema([("a", pa.int64())])),
        ):
            with pytest.raises(WarehouseError, match="cannot write"):
                write()
    sent = [s for s in stub.sql() if not s.startswith("SELECT database_name")]
    assert sent == [
        f'USE DATABASE "DB$V{VERSION}"',
        'USE SCHEMA "MDSTACK"',
        'SELECT "id" FROM "raw"."items"',  # the kept database: no time travel
        f'SELECT "id" FROM "DB$V{VERSION}"."raw"."items" JOIN "OTHER"."raw"."x" USING ("id")',
    ]


def test_a_clone_of_a_kept_version_clones_that_database(monkeypatch):
    wh, stub = stub_warehouse(account([VERSION]))
    monkeypatch.setattr(adapter.snowflake.connector, "connect", lambda **kwargs: stub)
    wh.clone_into("restore", as_of=VERSION)
    assert f'CREATE OR REPLACE DATABASE "DB_restore" CLONE "DB$V{VERSION}"' in stub.sql()
    assert not [s for s in stub.sql() if "AT (TIMESTAMP" in s]
    assert 'INSERT INTO "DB_restore"."MDSTACK"."_mds_restore_base" VALUES (?, ?)' in stub.sql()


def test_expire_drops_the_kept_versions_older_than_the_retention(monkeypatch):
    day = 86_400_000
    kept = [VERSION - 3 * day, VERSION - 2 * day, VERSION]
    wh, stub = stub_warehouse(account(kept), retention="36h")
    monkeypatch.setattr(adapter.snowflake.connector, "connect", lambda **kwargs: stub)
    cutoff = datetime.fromtimestamp((VERSION - day) / 1000, UTC)
    dry = wh.expire(cutoff, dry_run=True)
    assert (dry.snapshots, [s for s in stub.sql() if "DROP" in s]) == (2, [])
    done = wh.expire(cutoff)
    assert [s for s in stub.sql() if "DROP" in s] == [
        f'DROP DATABASE IF EXISTS "DB$V{VERSION - 3 * day}"',
        f'DROP DATABASE IF EXISTS "DB$V{VERSION - 2 * day}"',
    ]
    assert done.snapshots == 2 and done.oldest_kept == datetime.fromtimestamp(VERSION / 1000, UTC)
    later = wh.expire(datetime(2100, 1, 1, tzinfo=UTC), dry_run=True)
    assert later.snapshots == 2  # every version is older, but the newest stays


# -- kept versions on fakesnow: read, compared ------------------------------------------------
def keep_by_hand(wh: SnowflakeWarehouse, version: int) -> None:
    """What ``CREATE DATABASE ... CLONE`` does on Snowflake and fakesnow cannot (its clone
    of a database is empty): the kept database, copied table by table."""
    database = wh.target.database
    kept = ident(versions.kept_database(database, version))
    wh._run(f"CREATE DATABASE {kept}")
    tables = wh._run(
        f"SELECT table_schema, table_name FROM {ident(database)}.information_schema.tables "
        "WHERE table_type = 'BASE TABLE' AND table_schema <> 'INFORMATION_SCHEMA'"
    ).fetchall()
    for schema, name in tables:
        wh._run(f"CREATE SCHEMA IF NOT EXISTS {kept}.{ident(schema)}")
        wh._run(
            f"CREATE TABLE {kept}.{ident(schema)}.{ident(name)} AS "
            f"SELECT * FROM {ident(database)}.{ident(schema)}.{ident(name)}"
        )
    wh._run(f"USE DATABASE {ident(database)}")  # as keep_version does: CREATE DATABASE moved it
    wh._run(f"USE SCHEMA {ident(wh.meta_schema)}")


def test_kept_versions_are_read_and_compared_where_they_are_kept():
    first, second = 1_000, 2_000
    unopened = open_fakesnow(target={"retention": "7d"})
    assert not unopened.capabilities.diff  # fakesnow keeps no versions: summaries offer none
    with unopened as wh:
        wh.execute("CREATE SCHEMA raw")
        wh.execute(
            "CREATE TABLE raw.orders (id BIGINT, amount DOUBLE, _mds_region VARCHAR, "
            "_mds_run_id VARCHAR)"
        )
        wh.execute(
            "INSERT INTO raw.orders VALUES (1, 10, 'eu', 'r1'), (2, 20, 'eu', 'r1'), "
            "(3, 30, 'us', 'r1'), (4, 40, 'us', 'r1')"
        )
        keep_by_hand(wh, first)
        wh.execute("UPDATE raw.orders SET amount = 11 WHERE id = 1")  # changed
        wh.execute("UPDATE raw.orders SET _mds_run_id = 'r2' WHERE id = 2")  # bookkeeping only
        wh.execute("DELETE FROM raw.orders WHERE id = 3")
        wh.execute("INSERT INTO raw.orders VALUES (5, 50, 'eu', 'r2'), (6, 60, 'eu', 'r2')")
        wh.execute("CREATE SCHEMA marts")  # as dbt makes it: unquoted names, upper case
        wh.execute(
            'CREATE TABLE marts.daily AS SELECT region AS "REGION", 2 AS "ORDERS", '
            "CURRENT_TIMESTAMP AS \"_MDS_LOADED_AT\" FROM (VALUES ('eu'), ('us')) v(region)"
        )
        keep_by_hand(wh, second)
        wh.execute('UPDATE marts.daily SET "_MDS_LOADED_AT" = CURRENT_TIMESTAMP')  # bookkeeping
        wh.execute('UPDATE marts.daily SET "ORDERS" = 3 WHERE "REGION" = \'us\'')
        wh.execute("INSERT INTO raw.orders VALUES (7, 70, 'us', 'r3')")
        between = {(d.table, d.region): (d.added, d.deleted) for d in wh.diff(first, second)}
        since = {(d.table, d.region): (d.added, d.deleted) for d in wh.diff(second, None)}
        with pytest.raises(WarehouseError, match=r"version 1500 of .* is not kept") as refused:
            wh.diff(1_500, second)
        with pytest.raises(WarehouseError, match="version 2500 of"):
            wh.diff(first, 2_500)  # a later run whose version was not kept is not now
    assert between == {
        ("raw.orders", "eu"): (3, 1),  # id 1 as it is now, 5 and 6; id 1 as it was
        ("raw.orders", "us"): (0, 1),
        ("marts.daily", "eu"): (1, 0),  # made in between: every row is new
        ("marts.daily", "us"): (1, 0),
    }
    assert since == {  # the kept version and now
        ("raw.orders", "us"): (1, 0),
        ("marts.daily", "us"): (1, 1),  # changed: one row gone, one new
    }
    assert "retention:" in (refused.value.hint or "")
    with unopened.as_of(first) as old:
        assert old.query("SELECT count(*) AS n, sum(amount) AS s FROM raw.orders").to_pylist() == [
            {"n": 4, "s": 100}
        ]
        with pytest.raises(WarehouseError, match=r"does not exist|not found"):
            old.query("SELECT * FROM marts.daily")  # made after the version


# -- real Snowflake ---------------------------------------------------------------------------
@pytest.fixture
def real_wh():
    if reason := real_unavailable():
        pytest.skip(reason)
    with real_snowflake() as wh:
        yield wh


def test_real_snowflake_reads_and_clones_the_warehouse_as_a_version_left_it(real_wh):
    wh, name = real_wh, f"tt_{uuid.uuid4().hex[:8]}"
    ref = table(wh.meta_schema, name)
    wh.execute(f"CREATE TABLE {ref} (id BIGINT)")
    wh.execute(f"INSERT INTO {ref} VALUES (1)")
    time.sleep(1)
    version = wh.current_snapshot()
    time.sleep(1)
    wh.execute(f"INSERT INTO {ref} VALUES (2)")
    query = f"SELECT id FROM {ref} ORDER BY id"
    with wh.as_of(version) as old:
        assert old.query(query).to_pylist() == [{"id": 1}]
    assert wh.query(query).to_pylist() == [{"id": 1}, {"id": 2}]
    env, unopened = f"tt{uuid.uuid4().hex[:6]}", SnowflakeWarehouse(wh.target)
    try:
        with unopened.clone_into(env, as_of=version) as clone:
            assert clone.query(query).to_pylist() == [{"id": 1}]
    finally:
        unopened.drop_environment(env)


def test_real_snowflake_reads_a_kept_version_after_its_tables_were_made_anew(real_wh):
    """What time travel cannot: the table replaced after the version (as dbt does)."""
    wh, name = real_wh, f"tt_{uuid.uuid4().hex[:8]}"
    wh.target = wh.target.model_copy(update={"retention": "1d"})
    ref = table(wh.meta_schema, name)
    wh.execute(f"CREATE TABLE {ref} AS SELECT 1 AS id")
    version = wh.current_snapshot()
    wh.keep_version(version)
    try:
        wh.execute(f"CREATE OR REPLACE TABLE {ref} AS SELECT 2 AS id")
        with wh.as_of(version) as old:
            assert old.query(f"SELECT id FROM {ref}").to_pylist() == [{"id": 1}]
    finally:
        versions.drop(wh._run, wh.target.database, version)
