"""``mdstack doctor`` against real parts: PostgreSQL clusters, OpenBao, a locked DuckDB file.

Each CDC prerequisite is taken away one at a time: the doctor exits 1 with a line naming the
problem and the SQL that fixes it; that SQL, run as printed, makes the check pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from connectors.postgres.cdc import slot_name
from stack.cli import app
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import ROOT
from tests.servers.http_server import Reply, ScriptedServer
from tests.servers.pg_server import REPLICA, PgCluster, _cluster, connect_kwargs, drop_slots

if TYPE_CHECKING:
    from tests.servers.vault_server import DevVault

pytest_plugins = ["tests.servers.vault_server"]  # fixtures `vault` and `throwaway_vault`


def doctor(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["doctor", "--config", str(config), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def write_config(folder: Path, **sections: Any) -> Path:
    """A stack.yml with a DuckDB target in ``folder`` and the given sections."""
    config = {
        "name": "doc",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(folder / "wh")}},
        "sources": {},
    } | sections
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def line(output: str, text: str) -> str:
    """The output's line holding ``text``, with the fix line under it, if any."""
    lines = output.splitlines()
    for i, found in enumerate(lines):
        if text in found:
            fix = lines[i + 1] if i + 1 < len(lines) and "fix:" in lines[i + 1] else ""
            return f"{found}\n{fix}"
    raise AssertionError(f"no line with {text!r} in:\n{output}")


# config ------------------------------------------------------------------------------------


def test_a_bad_config_is_one_failed_line_and_nothing_else(tmp_path: Path):
    path = tmp_path / "stack.yml"
    path.write_text("name: doc\ntarget: nowhere\ntargets: {}\nsources: {}\n")
    code, output = doctor(path)
    assert code == 1
    assert output.splitlines()[0].startswith("✗ config: loads")
    assert "nowhere" in output and "warehouse" not in output


def test_a_fresh_duckdb_project_passes_and_prints_json(tmp_path: Path):
    path = write_config(tmp_path)
    code, output = doctor(path)
    assert code == 0, output
    assert "✓ warehouse: local opens" in output and "first sync creates it" in output
    assert not (tmp_path / "wh" / "catalog.ducklake").exists()  # the doctor creates nothing
    code, output = doctor(path, "--json", "--min-free-mib", str(1 << 40))
    checks = json.loads(output)
    assert code == 0  # a warning does not fail
    disk = next(c for c in checks if c["name"] == "free disk")
    assert disk["status"] == "warn" and disk["fix"]


# the warehouse -----------------------------------------------------------------------------


def test_a_locked_duckdb_warehouse_names_the_process_and_the_fix(tmp_path: Path):
    path = write_config(tmp_path)
    with DuckDBWarehouse(tmp_path / "wh") as wh:
        wh.execute("CREATE TABLE t AS SELECT 1 AS a")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            f"con = duckdb.connect({str(tmp_path / 'wh' / 'catalog.ducklake')!r})\n"
            "print('holding', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        code, output = doctor(path)
        assert code == 1
        locked = line(output, "warehouse: local not locked")
        assert locked.startswith("✗") and f"PID {holder.pid}" in locked
        assert f"kill {holder.pid}" in locked
    finally:
        holder.kill()
        holder.wait()
    code, output = doctor(path)
    assert code == 0, output
    assert "catalog readable" in line(output, "✓ warehouse: local opens")


# PostgreSQL CDC ----------------------------------------------------------------------------


def cdc_config(folder: Path, dsn: dict[str, Any], schema: str, **streams: Any) -> Path:
    source = {
        "connector": "postgres",
        "schema": "raw_pg",
        "config": dsn
        | {"schemas": [schema], "replication": {"slot": schema, "publication": schema}},
        "streams": streams or {"items": {"sync": "incremental_deduped"}},
    }
    return write_config(folder, sources={"pg": source})


@pytest.fixture
def cdc(pg_database: dict[str, Any]) -> Iterator[tuple[psycopg.Connection, str]]:
    """A schema with a keyed table ``items`` and a publication for it; slots dropped after."""
    conn = psycopg.connect(**connect_kwargs(pg_database), autocommit=True)
    schema = f"doc_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(f"CREATE TABLE {schema}.items (id int PRIMARY KEY, name text)")
    conn.execute(f"CREATE PUBLICATION {schema} FOR TABLE {schema}.items")
    try:
        yield conn, schema
    finally:
        drop_slots(conn, schema)
        conn.close()


def fix_of(output: str, text: str) -> str:
    return line(output, text).split("fix: ", 1)[1].strip()


def test_cdc_ready_passes_every_line(tmp_path, pg_database, cdc):
    _, schema = cdc
    code, output = doctor(cdc_config(tmp_path, pg_database, schema))
    assert code == 0, output
    for text in ("connects", "wal_level", "replication role", f"publication {schema}"):
        assert line(output, text).startswith("✓")
    assert f"in publication '{schema}'" in line(output, f"✓ source pg: {schema}.items published")
    assert "DEFAULT: carries the key ['id']" in line(output, f"{schema}.items replica identity")
    assert "first CDC sync creates it" in line(output, f"slot {schema} ")


def test_cdc_without_the_publication(tmp_path, pg_database, cdc):
    conn, schema = cdc
    conn.execute(f"DROP PUBLICATION {schema}")
    role = f"doc_{uuid.uuid4().hex[:8]}"  # may read and replicate, owns nothing
    conn.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
    conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    path = cdc_config(tmp_path, pg_database | {"user": role}, schema)
    code, output = doctor(path)
    assert code == 1
    assert line(output, f"publication {schema}").startswith("✗")
    fix = fix_of(output, f"publication {schema}")
    assert fix == f'CREATE PUBLICATION "{schema}" FOR TABLE "{schema}"."items";'
    # the owner of the tables may create it: a sync does, so it is only a warning
    owner = cdc_config(tmp_path, pg_database, schema)
    code, output = doctor(owner)
    assert code == 0, output
    assert "a sync creates it" in line(output, f"! source pg: publication {schema}")
    conn.execute(fix)
    assert doctor(path)[0] == 0


def test_cdc_publication_carrying_a_table_no_stream_reads(tmp_path, pg_database, cdc):
    conn, schema = cdc
    conn.execute(f"CREATE TABLE {schema}.gone (id int PRIMARY KEY)")
    conn.execute(f"ALTER PUBLICATION {schema} ADD TABLE {schema}.gone")
    code, output = doctor(cdc_config(tmp_path, pg_database, schema))
    assert code == 0, output  # a warning: the changes are decoded and skipped
    found = line(output, f"! source pg: publication {schema} tables")
    assert f"{schema}.gone, which no CDC stream of pg reads" in found
    fix = fix_of(output, f"publication {schema} tables")
    assert fix == f'ALTER PUBLICATION "{schema}" DROP TABLE "{schema}"."gone";'
    conn.execute(fix)
    assert "tables" not in " ".join(
        n for n in doctor(cdc_config(tmp_path, pg_database, schema))[1].splitlines() if "!" in n
    )


def test_cdc_table_without_a_key_and_default_identity(tmp_path, pg_database, cdc):
    conn, schema = cdc
    conn.execute(f"CREATE TABLE {schema}.nokey (a int, b text)")
    conn.execute(f"ALTER PUBLICATION {schema} ADD TABLE {schema}.nokey")
    streams = {"nokey": {"sync": "incremental_deduped", "primary_key": ["a"]}}
    path = cdc_config(tmp_path, pg_database, schema, **streams)
    code, output = doctor(path)
    assert code == 1
    found = line(output, f"{schema}.nokey replica identity")
    assert found.startswith("✗")
    assert "do not carry the key ['a'] (replica identity DEFAULT)" in found
    fix = fix_of(output, f"{schema}.nokey replica identity")
    assert fix == f'ALTER TABLE "{schema}"."nokey" REPLICA IDENTITY FULL;'
    conn.execute(fix)
    code, output = doctor(path)
    assert code == 0, output
    assert "FULL: carries the key ['a']" in line(output, f"✓ source pg: {schema}.nokey replica")


def test_cdc_role_without_replication(tmp_path, pg_database, cdc):
    conn, schema = cdc
    role = f"doc_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {role} LOGIN")
    conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    path = cdc_config(tmp_path, pg_database | {"user": role}, schema)
    code, output = doctor(path)
    assert code == 1
    assert "may not use replication slots" in line(output, "replication role")
    fix = fix_of(output, "replication role")
    assert fix == f'ALTER ROLE "{role}" WITH REPLICATION;'
    conn.execute(fix)
    code, output = doctor(path)
    assert code == 0, output
    assert "has REPLICATION" in line(output, "replication role")


def test_cdc_slot_holding_wal_back_is_a_warning_with_the_way_out(tmp_path, pg_database, cdc):
    conn, schema = cdc
    slot = slot_name(schema)
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    conn.execute(
        f"INSERT INTO {schema}.items SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g"
    )
    path = cdc_config(tmp_path, pg_database, schema)
    code, output = doctor(path, "--max-slot-lag-mib", "1")
    assert code == 0  # a warning: the run works, the server's disk fills
    found = line(output, f"slot {slot}")
    assert found.startswith("!") and "inactive, holds back" in found and "MiB of WAL" in found
    assert f"SELECT pg_drop_replication_slot('{slot}');" in found
    conn.execute(f"SELECT pg_drop_replication_slot('{slot}')")
    assert line(doctor(path, "--max-slot-lag-mib", "1")[1], f"slot {slot}").startswith("✓")


@pytest.fixture
def pg_no_logical() -> Iterator[PgCluster]:
    """A cluster of this test's own without logical decoding: the test restarts it."""
    yield from _cluster(REPLICA)


def test_cdc_wal_level_not_logical(tmp_path, pg_no_logical: PgCluster):
    with psycopg.connect(**connect_kwargs(pg_no_logical.dsn), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
        conn.execute("CREATE PUBLICATION pub FOR TABLE items")
    source = {
        "connector": "postgres",
        "schema": "raw_pg",
        "config": pg_no_logical.dsn | {"replication": {"slot": "s", "publication": "pub"}},
        "streams": {"items": {}},
    }
    path = write_config(tmp_path, sources={"pg": source})
    code, output = doctor(path)
    assert code == 1
    assert "it is 'replica'" in line(output, "source pg: wal_level")
    fix = fix_of(output, "source pg: wal_level")
    assert fix.startswith("ALTER SYSTEM SET wal_level = logical;") and "restart" in fix
    with psycopg.connect(**connect_kwargs(pg_no_logical.dsn), autocommit=True) as conn:
        conn.execute(fix)
    # restart without the command line's wal_level, so the ALTER SYSTEM value applies
    pg_no_logical.settings = {k: v for k, v in REPLICA.items() if k != "wal_level"}
    pg_no_logical.restart()
    code, output = doctor(path)
    assert code == 0, output
    assert "logical" in line(output, "✓ source pg: wal_level")


# Vault -------------------------------------------------------------------------------------


def vault_config(folder: Path, url: str, monkeypatch, token: str) -> Path:
    monkeypatch.setenv("DOC_VAULT_ADDR", url)
    monkeypatch.setenv("DOC_VAULT_TOKEN", token)
    vault = {
        "url": "${env:DOC_VAULT_ADDR}",
        "auth": {"method": "token", "token": "${env:DOC_VAULT_TOKEN}"},
    }
    return write_config(folder, secrets={"vault": vault})


def test_vault_healthy_shows_the_token_ttl(tmp_path, vault: DevVault, monkeypatch):
    token = vault.client().auth.token.create(ttl="24h", policies=["default"])["auth"][
        "client_token"
    ]
    code, output = doctor(vault_config(tmp_path, vault.url, monkeypatch, token))
    assert code == 0, output
    assert vault.url in line(output, "✓ vault: reachable, unsealed")
    assert "policies: default" in line(output, "✓ vault: token login")
    assert re.search(r"2[34]h \d\dm left \(renewable\)", line(output, "✓ vault: token ttl"))
    assert token not in output


def test_vault_approle_login_passes_and_leaves_no_token(tmp_path, vault: DevVault, monkeypatch):
    root = vault.client()
    mount = f"approle-doc-{uuid.uuid4().hex[:6]}"
    root.sys.enable_auth_method("approle", path=mount)
    root.write_data(f"auth/{mount}/role/doctor", data={"token_ttl": "20m", "policies": "default"})
    role_id = root.read(f"auth/{mount}/role/doctor/role-id")["data"]["role_id"]
    secret_id = root.write_data(f"auth/{mount}/role/doctor/secret-id")["data"]["secret_id"]
    monkeypatch.setenv("DOC_VAULT_ADDR", vault.url)
    monkeypatch.setenv("DOC_ROLE_ID", role_id)
    monkeypatch.setenv("DOC_SECRET_ID", secret_id)
    auth = {
        "method": "approle",
        "mount": mount,
        "role_id": "${env:DOC_ROLE_ID}",
        "secret_id": "${env:DOC_SECRET_ID}",
    }
    path = write_config(tmp_path, secrets={"vault": {"url": "${env:DOC_VAULT_ADDR}", "auth": auth}})
    code, output = doctor(path)
    assert code == 0, output
    assert "policies: default" in line(output, "✓ vault: approle login")
    assert "a run renews it" in line(output, "✓ vault: token ttl")  # 20 min: no warning
    assert secret_id not in output
    accessors = root.list("auth/token/accessors")["data"]["keys"]
    tokens = [root.auth.token.lookup_accessor(a)["data"] for a in accessors]
    assert not [t for t in tokens if t.get("path", "").startswith(f"auth/{mount}/")]


def test_vault_token_about_to_expire_warns(tmp_path, vault: DevVault, monkeypatch):
    token = vault.client().auth.token.create(ttl="30m", policies=["default"])["auth"][
        "client_token"
    ]
    code, output = doctor(vault_config(tmp_path, vault.url, monkeypatch, token))
    assert code == 0
    found = line(output, "vault: token ttl")
    assert found.startswith("!") and re.search(r"(29|30)m \d\ds left", found)
    assert "bao token renew" in found


def test_vault_revoked_token_fails(tmp_path, vault: DevVault, monkeypatch):
    token = vault.client().auth.token.create(ttl="1h", policies=["default"])["auth"]["client_token"]
    vault.client().auth.token.revoke(token)
    code, output = doctor(vault_config(tmp_path, vault.url, monkeypatch, token))
    assert code == 1
    found = line(output, "vault: token login")
    assert found.startswith("✗") and "issue a new one" in found and token not in output


def test_vault_sealed_fails_with_the_unseal_command(
    tmp_path, throwaway_vault: DevVault, monkeypatch
):
    path = vault_config(tmp_path, throwaway_vault.url, monkeypatch, throwaway_vault.root_token)
    throwaway_vault.client().sys.seal()
    code, output = doctor(path)
    assert code == 1
    found = line(output, "vault: unsealed")
    assert "is sealed" in found and "bao operator unseal" in found
    assert "token login" not in output  # nothing past a sealed Vault is worth trying


def test_vault_unreachable(tmp_path, monkeypatch):
    code, output = doctor(vault_config(tmp_path, "http://127.0.0.1:9", monkeypatch, "x"))
    assert code == 1
    assert "is unreachable" in line(output, "✗ vault: reachable")


# dbt and Prefect ---------------------------------------------------------------------------


def test_dbt_debug_runs_against_the_generated_profile(tmp_path: Path):
    code, output = doctor(write_config(tmp_path, dbt={"project_dir": str(ROOT / "dbt_project")}))
    assert code == 0, output
    assert "✓ dbt: dbt debug" in output
    code, output = doctor(write_config(tmp_path, dbt={"project_dir": str(tmp_path / "none")}))
    assert code == 1 and "dbt.project_dir" in line(output, "✗ config")


def test_prefect_api_health(tmp_path: Path, monkeypatch):
    path = write_config(tmp_path)
    with ScriptedServer() as server:
        monkeypatch.setenv("PREFECT_API_URL", f"{server.url}/api")
        code, output = doctor(path)
        assert code == 0 and "✓ prefect: api answers" in output
        assert server.seen[-1].path == "/api/health"
        server.queue(Reply(503, b"down"))
        code, output = doctor(path)
        assert code == 1 and "answered 503" in line(output, "✗ prefect: api answers")


@pytest.fixture
def fakesnow() -> Iterator[dict[str, Any]]:
    """fakesnow's server, stopped after the test (this module's one Snowflake test)."""
    from tests.snowflake_fixtures import fakesnow_server, stop_fakesnow_server

    yield fakesnow_server()
    stop_fakesnow_server()


def test_a_snowflake_target_connects(tmp_path: Path, fakesnow, monkeypatch):
    server = fakesnow
    monkeypatch.setenv("DOC_SF_PASSWORD", "sf-secret-5b1e")
    target = {
        "type": "snowflake",
        "account": "fakesnow",
        "user": "fake",
        "password": "${env:DOC_SF_PASSWORD}",
        "database": "DOCTOR",
        "fakesnow": True,
    } | {k: server[k] for k in ("host", "port", "protocol")}
    path = write_config(tmp_path, target="sf", targets={"sf": target})
    code, output = doctor(path)
    assert code == 0, output
    assert "version" in line(output, "✓ warehouse: sf connects")
    assert "sf-secret-5b1e" not in output
