"""`mdstack expire` on a lake whose catalog is in PostgreSQL, with environments reading it.

An environment of such a lake reads the lake's own data files, and its publish reads the
lake's record of the versions made after its clone. Expiring the lake deletes the
versions up to the oldest clone's and the files only they used, except those an
environment still names; once the environment is dropped, the next expire deletes the
rest. What the lake and its clones read never changes; what is left on disk is what
some catalog names.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from stack.errors import WarehouseError
from stack.load import utcnow
from stack.warehouse import _ducklake_pg_envs as pg_envs
from stack.warehouse import _ducklake_pg_expire as pg_expire
from stack.warehouse._ducklake_pg import lock_key
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.contract import pg_catalog
from tests.servers.pg_server import PgCluster, connect_kwargs

ORDERS = "SELECT count(*) AS n, sum(id) AS total FROM s.orders"


def lake_on(cluster: PgCluster, path: Path) -> DuckDBWarehouse:
    return DuckDBWarehouse(path, threads=1, catalog=pg_catalog(path, cluster.dsn["port"]))


def read(wh: DuckDBWarehouse) -> dict:
    with wh:
        return wh.query(ORDERS).to_pylist()[0]


def parquet_files(lake: DuckDBWarehouse) -> set[Path]:
    return set((lake.path / "data").rglob("*.parquet"))


def named_files(cluster: PgCluster, *catalogs: str) -> set[Path]:
    """Every data and delete file the catalogs in these schemas name."""
    with psycopg.connect(**connect_kwargs(cluster.dsn)) as conn:
        return {
            Path(row[1])
            for catalog in catalogs
            for row in conn.execute(pg_envs.files_sql(catalog)).fetchall()
        }


def test_expire_keeps_what_environments_read_and_deletes_it_once_they_are_gone(
    tmp_path, pg_logical
):
    lake = lake_on(pg_logical, tmp_path / "wh")
    assert lake.pg is not None
    with lake:
        lake.execute("CREATE SCHEMA s")
        lake.execute("CREATE TABLE s.orders AS SELECT range AS id FROM range(50000)")
        lake.execute("DELETE FROM s.orders WHERE id % 7 = 0")  # a delete file
        lake.execute("CREATE TABLE s.old AS SELECT range AS x FROM range(50000)")
        lake.execute("DROP TABLE s.old")
    dev = lake.clone_into("dev")
    assert dev.pg is not None
    dev_reads = read(dev)
    with lake:
        lake.execute("CREATE OR REPLACE TABLE s.orders AS SELECT range AS id FROM range(1000)")
    lake_reads = read(lake)
    before = parquet_files(lake)

    expired = lake.expire(utcnow())
    assert expired.snapshots > 0
    assert read(lake) == lake_reads and read(dev) == dev_reads  # nothing either reads went
    assert parquet_files(lake) == before == named_files(pg_logical, lake.pg.schema, dev.pg.schema)
    assert expired.environments == ("dev",)

    lake.drop_environment("dev")
    expired = lake.expire(utcnow())
    assert read(lake) == lake_reads and expired.environments == ()
    on_disk = parquet_files(lake)
    assert len(on_disk) == len(before) - 3  # the old orders, its deletes and the dropped table
    assert on_disk == named_files(pg_logical, lake.pg.schema)


def test_an_environment_of_a_postgresql_catalog_lake_is_not_expired(tmp_path, pg_logical):
    lake = lake_on(pg_logical, tmp_path / "wh")
    with lake:
        lake.execute("CREATE SCHEMA s")
        lake.execute("CREATE TABLE s.orders AS SELECT range AS id FROM range(100)")
    dev = lake.clone_into("dev")
    with dev:
        dev.execute("DELETE FROM s.orders WHERE id < 50")
    files = parquet_files(lake)
    with pytest.raises(WarehouseError, match="expiring it would delete them") as refused:
        dev.expire(utcnow())
    assert "expire the lake itself" in (refused.value.hint or "")
    assert parquet_files(lake) == files and read(lake)["n"] == 100


def test_a_clone_waits_while_expire_decides_what_to_keep(tmp_path, pg_logical, monkeypatch):
    """A clone that copied the catalog before the expire but committed after the files
    to keep were chosen would name files the cleanup deletes: it waits instead."""
    lake = lake_on(pg_logical, tmp_path / "wh")
    assert lake.pg is not None
    with lake:
        lake.execute("CREATE SCHEMA s")
        lake.execute("CREATE TABLE s.orders AS SELECT range AS id FROM range(100)")
    done: list[DuckDBWarehouse] = []
    cloning = threading.Thread(target=lambda: done.append(lake.clone_into("dev")))
    decide, waited = pg_expire.keep_environments_files, []

    def deciding(conninfo: str, schema: str) -> tuple[set[str], datetime]:
        cloning.start()
        waited.append(waiting_for_the_lock(pg_logical, lock_key(schema, pg_envs.CLONE_LOCK)))
        waited.append(not done)
        return decide(conninfo, schema)

    monkeypatch.setattr(pg_expire, "keep_environments_files", deciding)
    lake.expire(utcnow())
    cloning.join(timeout=60)
    assert waited == [True, True] and len(done) == 1
    assert read(done[0])["n"] == 100


def waiting_for_the_lock(cluster: PgCluster, key: int) -> bool:
    """Whether a session waits for advisory lock ``key`` (within 30 s)."""
    high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    with psycopg.connect(**connect_kwargs(cluster.dsn), autocommit=True) as conn:
        for _ in range(300):
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND classid::bigint = %s AND objid::bigint = %s",
                (high, low),
            ).fetchone()
            if row and row[0]:
                return True
            time.sleep(0.1)
    return False


def test_expire_keeps_the_versions_a_clone_s_publish_checks(tmp_path, pg_logical):
    """A publish refuses when the lake replaced what the environment changed after its
    clone, read from the lake's record of each version's changes: expire keeps the
    versions made after the oldest clone, and a publish refuses when they went anyway."""
    lake = lake_on(pg_logical, tmp_path / "wh")
    with lake:
        lake.execute("CREATE SCHEMA m")
        lake.execute("CREATE TABLE m.x AS SELECT 1 AS v")
    dev = lake.clone_into("dev")
    with lake:  # another writer replaces m.x after the clone, then commits again
        lake.execute("CREATE OR REPLACE TABLE m.x AS SELECT 2 AS v")
        lake.execute("CREATE TABLE m.other AS SELECT 1 AS w")
    with dev:
        dev.execute("CREATE OR REPLACE TABLE m.x AS SELECT 3 AS v")
    expired = lake.expire(utcnow())
    assert expired.snapshots > 0  # the versions up to the clone's
    assert expired.environments == ("dev",)  # the ones after it: dev holds them back
    with pytest.raises(WarehouseError, match=r"changed m\.x"):
        lake.publish("dev")
    with lake:  # DuckLake's own expire, by hand, takes the versions the check reads
        lake.con.execute("CALL ducklake_expire_snapshots('lake', older_than => now())")
    with pytest.raises(WarehouseError, match="no longer keeps the versions") as refused:
        lake.publish("dev")
    assert "clone dev again" in (refused.value.hint or "")
    with lake:
        assert lake.query("SELECT v FROM m.x").to_pylist() == [{"v": 2}]
