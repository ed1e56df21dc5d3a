"""Write-audit-publish and clones on a lake whose catalog is in PostgreSQL.

The demo pipeline (dbt, checks, an audit gate test) on the session's PostgreSQL cluster:
what a dashboard sees in the published marts while one region's audit fails and another
region publishes, and what a clone lets a developer do without touching the lake.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
import yaml

from stack.config import load_config
from stack.config.targets import PostgresCatalog
from stack.errors import WarehouseError
from stack.warehouse import connect
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.servers.pg_server import PgCluster, connect_kwargs
from tests.test_publish import MARTS, failing_audit, project, rows_of, run


def on_pg_catalog(path: Path, cluster: PgCluster) -> DuckDBWarehouse:
    """Point the project's target at a catalog schema of ``cluster``; the lake, unopened."""
    config = yaml.safe_load(path.read_text())
    config["targets"]["local"]["catalog"] = {
        "type": "postgres",
        "host": "127.0.0.1",
        "port": cluster.dsn["port"],
        "database": "postgres",
        "user": "postgres",
        "schema": f"lake_{uuid.uuid4().hex[:8]}",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    loaded = load_config(path)
    lake = connect(loaded.active_target(None), loaded.root)
    assert isinstance(lake, DuckDBWarehouse) and lake.pg is not None
    return lake


def catalog_schemas(cluster: PgCluster, prefix: str) -> list[str]:
    with psycopg.connect(**connect_kwargs(cluster.dsn)) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s ORDER BY 1", (f"{prefix}%",)
        ).fetchall()
    return [r[0] for r in rows]


def test_a_failing_audit_leaves_the_published_marts_while_another_region_publishes(
    tmp_path, pg_logical
):
    path = project(tmp_path)
    lake = on_pg_catalog(path, pg_logical)
    assert lake.pg is not None
    first = run(path, "eu")
    assert first.published, first
    before = rows_of(lake, MARTS)
    assert before and catalog_schemas(pg_logical, lake.pg.schema) == [lake.pg.schema]

    said = failing_audit(path)
    assert "dbt test assert_audit_gate fail" in said and "not published" in said
    assert rows_of(lake, MARTS) == before  # dashboards still read the last good marts
    audit = lake.environment("audit-eu")
    assert audit.pg is not None and rows_of(audit, MARTS) != before  # kept for debugging
    audit_wrote = catalog_files(pg_logical, audit.pg.schema) - catalog_files(
        pg_logical, lake.pg.schema
    )
    assert audit_wrote and audit_wrote <= files_on_disk(lake)

    other = run(path, "us", fail_audit=False)  # another region publishes meanwhile
    assert other.published, other
    after_us = rows_of(lake, MARTS)
    assert {r[0] for r in after_us} >= {"eu", "us"}
    assert [r for r in after_us if r[0] == "eu"] != []

    fixed = run(path, "eu")
    assert fixed.published, fixed
    assert catalog_schemas(pg_logical, lake.pg.schema) == [lake.pg.schema]  # audits dropped
    assert catalog_files(pg_logical, lake.pg.schema) <= files_on_disk(lake)
    assert not audit_wrote & files_on_disk(lake)  # nor the files the failed audit wrote
    with lake as wh:
        checks = wh.query(
            f"SELECT count(*) AS n FROM {wh.meta_schema}._mds_checks WHERE run_id = ?",
            [fixed.run_id],
        ).to_pylist()[0]["n"]
    assert checks > 0  # the audit's check results reached the published ledger


def test_a_clone_is_isolated_both_ways_costs_no_data_copy_and_publishes_its_changes(
    tmp_path, pg_logical
):
    catalog = {"type": "postgres", "host": "127.0.0.1", "port": pg_logical.dsn["port"]}
    catalog |= {
        "database": "postgres",
        "user": "postgres",
        "schema": f"lake_{uuid.uuid4().hex[:8]}",
    }
    lake = DuckDBWarehouse(tmp_path / "wh", catalog=PostgresCatalog.model_validate(catalog))
    assert lake.pg is not None
    with lake as wh:
        wh.execute("CREATE SCHEMA s")
        wh.execute("CREATE TABLE s.t AS SELECT range AS id FROM range(1000)")
        wh.execute("CREATE TABLE s.other AS SELECT 1 AS x")
    files = sorted((tmp_path / "wh" / "data").rglob("*.parquet"))
    dev = lake.clone_into("dev")
    assert sorted((tmp_path / "wh" / "data").rglob("*.parquet")) == files  # no data copied
    with dev as wh:
        wh.execute("DELETE FROM s.t WHERE id < 500")
        wh.execute("CREATE VIEW s.v AS SELECT count(*) AS n FROM s.t")
    assert rows(dev, "SELECT count(*) FROM s.t") == (500,)
    assert rows(lake, "SELECT count(*) FROM s.t") == (1000,)
    with lake as wh:  # the lake moves on, apart from what the clone changed
        wh.execute("INSERT INTO s.other VALUES (2)")
    assert rows(dev, "SELECT count(*) FROM s.other") == (1,)

    lake.publish("dev")  # the clone's changes land; the lake's own stay
    assert rows(lake, "SELECT count(*), min(id) FROM s.t") == (500, 500)
    assert rows(lake, "SELECT n FROM s.v") == (500,)
    assert rows(lake, "SELECT count(*) FROM s.other") == (2,)

    again = lake.clone_into("dev")
    with again as wh:
        wh.execute("DELETE FROM s.t WHERE id < 600")
    with lake as wh:
        wh.execute("DELETE FROM s.t WHERE id >= 900")
    with pytest.raises(WarehouseError, match=r"changed s\.t while dev held its own version"):
        lake.publish("dev")  # both changed s.t: nothing written meanwhile is lost
    assert rows(lake, "SELECT count(*) FROM s.t") == (400,)
    assert again.pg is not None
    dev_wrote = catalog_files(pg_logical, again.pg.schema) - catalog_files(
        pg_logical, lake.pg.schema
    )
    assert dev_wrote and dev_wrote <= files_on_disk(lake)

    synced = lake.clone_into("dev")  # loads write the ledger: not a clone's to publish
    assert not dev_wrote & files_on_disk(lake)  # a new clone replaces the old one's files
    with synced as wh:
        wh.execute("CREATE TABLE main._mds_state AS SELECT 'r1' AS run_id FROM range(1000)")
    with pytest.raises(WarehouseError, match=r"wrote the ledger tables \['_mds_state'\]"):
        lake.publish("dev")
    assert synced.pg is not None
    dev_wrote = catalog_files(pg_logical, synced.pg.schema) - catalog_files(
        pg_logical, lake.pg.schema
    )
    assert dev_wrote and dev_wrote <= files_on_disk(lake)
    lake.drop_environment("dev")
    assert catalog_schemas(pg_logical, lake.pg.schema) == [lake.pg.schema]
    assert not dev_wrote & files_on_disk(lake)  # the files dev wrote went with it
    assert catalog_files(pg_logical, lake.pg.schema) <= files_on_disk(lake)  # the lake's stay


def files_on_disk(lake: DuckDBWarehouse) -> set[str]:
    return {p.name for p in Path(lake.data_path).rglob("*.parquet")}


def catalog_files(cluster: PgCluster, schema: str) -> set[str]:
    """The names of every data and delete file the lake's catalog knows, live or not."""
    with psycopg.connect(**connect_kwargs(cluster.dsn)) as conn:
        found = conn.execute(
            f'SELECT path FROM "{schema}".ducklake_data_file'
            f' UNION SELECT path FROM "{schema}".ducklake_delete_file'
        ).fetchall()
    return {Path(path).name for (path,) in found}


def rows(wh: DuckDBWarehouse, query: str) -> tuple:
    with wh:
        return tuple(wh.query(query).to_pylist()[0].values())
