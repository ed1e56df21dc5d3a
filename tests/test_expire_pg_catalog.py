"""`mdstack expire` on a lake whose catalog is in PostgreSQL, with environments reading it.

An environment of such a lake reads the lake's own data files. Expiring the lake deletes
the files only its old snapshots used, except those an environment still names; once the
environment is dropped, the next expire deletes them too. What the lake and its clones
read never changes; what is left on disk is what some catalog names.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from stack.config.targets import PostgresCatalog
from stack.errors import WarehouseError
from stack.load import utcnow
from stack.warehouse import _ducklake_pg_envs as pg_envs
from stack.warehouse import _ducklake_pg_expire as pg_expire
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.servers.pg_server import PgCluster, connect_kwargs

ORDERS = "SELECT count(*) AS n, sum(id) AS total FROM s.orders"


def lake_on(cluster: PgCluster, path: Path) -> DuckDBWarehouse:
    catalog = PostgresCatalog.model_validate(
        {
            "type": "postgres",
            "host": "127.0.0.1",
            "port": cluster.dsn["port"],
            "database": "postgres",
            "user": "postgres",
            "schema": f"lake_{uuid.uuid4().hex[:8]}",
        }
    )
    return DuckDBWarehouse(path, threads=1, catalog=catalog)


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
    dev = lake.clone_into("dev")
    assert dev.pg is not None
    dev_reads = read(dev)
    with lake:
        lake.execute("CREATE OR REPLACE TABLE s.orders AS SELECT range AS id FROM range(1000)")
        lake.execute("CREATE TABLE s.old AS SELECT range AS x FROM range(50000)")
        lake.execute("DROP TABLE s.old")
    lake_reads = read(lake)
    before = parquet_files(lake)

    expired = lake.expire(utcnow())
    assert expired.snapshots > 0
    assert read(lake) == lake_reads and read(dev) == dev_reads  # nothing either reads went
    on_disk = parquet_files(lake)
    assert on_disk < before  # the dropped table's file went
    assert on_disk == named_files(pg_logical, lake.pg.schema, dev.pg.schema)

    lake.drop_environment("dev")
    lake.expire(utcnow())
    assert read(lake) == lake_reads
    assert parquet_files(lake) == named_files(pg_logical, lake.pg.schema)


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


def test_a_clone_waits_while_expire_decides_what_to_keep(tmp_path, pg_logical):
    """A clone that copied the catalog before the expire but committed after the files
    to keep were chosen would name files the cleanup deletes: it waits instead."""
    lake = lake_on(pg_logical, tmp_path / "wh")
    assert lake.pg is not None
    with lake:
        lake.execute("CREATE SCHEMA s")
        lake.execute("CREATE TABLE s.orders AS SELECT range AS id FROM range(100)")
    conninfo = lake.pg.conninfo(password=True)
    done: list[Path] = []
    with pg_expire.clones_paused(conninfo, lake.pg.schema):
        cloning = threading.Thread(target=lambda: done.append(lake.clone_into("dev").path))
        cloning.start()
        assert waiting_for_the_lock(pg_logical, pg_envs.clone_lock(lake.pg.schema))
        assert not done
    cloning.join(timeout=60)
    assert len(done) == 1
    assert read(lake.environment("dev"))["n"] == 100


def waiting_for_the_lock(cluster: PgCluster, name: str) -> bool:
    """Whether a session waits for the advisory lock ``name`` (within 30 s)."""
    with psycopg.connect(**connect_kwargs(cluster.dsn), autocommit=True) as conn:
        for _ in range(300):
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND objid = hashtext(%s)::oid",
                (name,),
            ).fetchone()
            if row and row[0]:
                return True
            time.sleep(0.1)
    return False
