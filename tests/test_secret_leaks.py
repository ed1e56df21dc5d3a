"""A Vault-held password never leaks: not in logs, Prefect's database, errors or the warehouse.

The whole pipeline runs as a user runs it (`mdstack run`, Prefect flow, in a
subprocess) with a PostgreSQL source whose password lives in a real OpenBao
server, once successfully and once failing; then every place a secret could
end up is searched for it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import yaml

from stack.load import ledger
from stack.redact import register_secret
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.servers.pg_server import connect_kwargs

pytest_plugins = ["tests.servers.vault_server"]
pytestmark = pytest.mark.slow


@pytest.fixture
def pg_schema(pg_database: dict):
    name = f"leak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**connect_kwargs(pg_database), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(f"CREATE TABLE {name}.items (id bigint PRIMARY KEY, note text)")
        conn.execute(
            f"INSERT INTO {name}.items SELECT g, 'row ' || g FROM generate_series(1, 50) g"
        )
    yield name
    with psycopg.connect(**connect_kwargs(pg_database), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


def write_stack(folder: Path, schema: str, server: dict) -> Path:
    config = {
        "name": "leaky",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(folder / "warehouse")}},
        "secrets": {
            "vault": {
                "url": "${env:VAULT_ADDR}",
                "auth": {"method": "token", "token": "${env:MDSTACK_VAULT_TOKEN}"},
            }
        },
        "sources": {
            "crm": {
                "connector": "postgres",
                "config": {
                    "host": "127.0.0.1",
                    "port": server["port"],
                    "database": server["database"],
                    "user": "postgres",
                    "password": "${vault:mdstack/crm#password}",
                    "schemas": [schema],
                },
                "schema": "raw_crm",
                "streams": {"items": {"sync": "full_refresh_overwrite"}},
            }
        },
    }
    path = folder / f"stack-{server['database']}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-c",
        "from stack.cli import app; app()",
        *args,
        "--config",
        str(path),
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_vault_password_appears_nowhere(tmp_path, vault, pg_schema, pg_database):
    password = "pw-" + secrets.token_hex(16)
    vault.client().secrets.kv.v2.create_or_update_secret(
        path="mdstack/crm", secret={"password": password}, mount_point="secret"
    )
    env = {
        **os.environ,
        "VAULT_ADDR": vault.url,
        "MDSTACK_VAULT_TOKEN": vault.root_token,
        "PREFECT_LOGGING_LEVEL": "DEBUG",
    }
    good = write_stack(tmp_path, pg_schema, pg_database)
    ok = run_cli(good, env, "run")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # A server that refuses the login (not one that is down: that the flow retries for a minute).
    refused_stack = write_stack(tmp_path, pg_schema, pg_database | {"database": "no_such_db"})
    refused = run_cli(refused_stack, env | {"MDSTACK_LOG_FORMAT": "json"}, "run")
    assert refused.returncode == 1
    logged = [json.loads(line) for line in refused.stderr.splitlines() if line.startswith("{")]
    assert any(line["level"] == "ERROR" and line["stream"] == "crm.items" for line in logged)
    checked = run_cli(good, env, "secrets", "check")
    assert checked.returncode == 0 and "mdstack/crm#password" in checked.stdout

    outputs = ok.stdout + ok.stderr + refused.stdout + refused.stderr + checked.stdout
    assert "crm.items" in ok.stdout  # the run did happen and print its summary
    assert password not in outputs
    stored = prefect_database(env)
    assert b"mdstack-pipeline" in stored  # the search does see what Prefect recorded
    assert password.encode() not in stored
    with DuckDBWarehouse(tmp_path / "warehouse") as wh:
        assert warehouse_hits(wh, "row 49") == ['"raw_crm"."items".note']  # the search works
        assert warehouse_hits(wh, password) == []


NOW = datetime(2026, 1, 1)


def test_a_secret_in_a_stream_error_is_masked_in_the_run_ledger(warehouse):
    key = "key-" + secrets.token_hex(16)
    register_secret(key)
    ledger.ensure_tables(warehouse)
    entry = ledger.RunEntry("r1", "p", "api", "items", "eu", "full_refresh_append", "failed", NOW)
    entry.error = f"GET https://api.example.com/items?api_key={key} answered 503"
    ledger.record(warehouse, entry)
    assert warehouse_hits(warehouse, "answered 503") == ['"main"."_mds_runs".error']
    assert warehouse_hits(warehouse, key) == []


def prefect_database(env: dict[str, str]) -> bytes:
    """Every byte Prefect stored: flow-run parameters, logs, task inputs, artifacts."""
    home = Path(env["PREFECT_HOME"])
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "prefect.db" for p in files), files
    return b"".join(p.read_bytes() for p in files)


def warehouse_hits(wh: DuckDBWarehouse, needle: str) -> list[str]:
    """Text columns of every table in the warehouse that contain ``needle``."""
    columns = wh.query(
        "SELECT table_schema, table_name, column_name FROM information_schema.columns "
        "WHERE table_catalog = 'lake' AND data_type = 'VARCHAR'"
    ).to_pylist()
    hits = []
    for c in columns:
        ref = f'"{c["table_schema"]}"."{c["table_name"]}"'
        found = (
            wh.query(
                f'SELECT count(*) FROM {ref} WHERE contains("{c["column_name"]}", ?)', [needle]
            )
            .column(0)[0]
            .as_py()
        )
        if found:
            hits.append(f"{ref}.{c['column_name']}")
    return hits
