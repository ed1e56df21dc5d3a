"""Secret references against a real OpenBao dev server (no mocks), and redaction.

The shared server is configured by ``secrets/bootstrap-dev.sh`` itself, so the
script and ``secrets/policy.hcl`` are tested too: every Vault read below runs
under the AppRole and the policy the pipeline would get, unless a test says
otherwise. Dynamic credentials use a real PostgreSQL: this module's database of the
session's throwaway cluster (``tests/servers/pg_server.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import hvac.exceptions
import pytest
from pydantic import SecretStr, ValidationError

from stack.config.secrets import SecretsConfig
from stack.errors import SecretError
from stack.redact import install_redaction, redact, register_secret
from stack.secrets import (
    DbCredentials,
    Resolver,
    check_references,
    parse_reference,
    reveal,
)
from tests.conftest import ROOT
from tests.servers.pg_server import connect_kwargs

if TYPE_CHECKING:
    from tests.servers.vault_server import DevVault

pytest_plugins = [
    "tests.servers.vault_server"
]  # fixtures `vault` (the session's) and `throwaway_vault`

APPROLE = {"method": "approle"}  # role_id/secret_id default to ${env:VAULT_ROLE_ID/SECRET_ID}


def settings(url: str = "${env:VAULT_ADDR}", auth: dict | None = None) -> SecretsConfig:
    return SecretsConfig.model_validate({"vault": {"url": url, "auth": auth or APPROLE}})


@pytest.fixture(scope="module")
def env(vault: DevVault, pg_database: dict) -> dict[str, str]:
    """Run the dev bootstrap script; its exports are the pipeline's environment.

    Its database engine manages this module's database of the session's PostgreSQL.
    """
    script = ROOT / "secrets" / "bootstrap-dev.sh"
    extra = {"MDSTACK_PG_PORT": str(pg_database["port"]), "MDSTACK_PG_DB": pg_database["database"]}
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run(
        [str(script)],
        env={**vault.env(), **extra, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines()
    )
    assert set(exports) == {"VAULT_ADDR", "VAULT_ROLE_ID", "VAULT_SECRET_ID"}
    return exports


@pytest.fixture(scope="module")
def kv(vault: DevVault, env) -> dict[str, str]:
    """Two versions of a secret the policy allows, and one it does not."""
    root = vault.client()
    values = {
        "v1": "first-" + secrets.token_urlsafe(12),
        "v2": "second-" + secrets.token_urlsafe(12),
        "other": "denied-" + secrets.token_urlsafe(12),
    }
    root.secrets.kv.v2.create_or_update_secret(path="mdstack/app", secret={"pw": values["v1"]})
    root.secrets.kv.v2.create_or_update_secret(
        path="mdstack/app", secret={"pw": values["v2"], "user": "svc-user"}
    )
    root.secrets.kv.v2.create_or_update_secret(path="other/place", secret={"k": values["other"]})
    return values


# -- references --------------------------------------------------------------


def test_reference_syntax():
    ref = parse_reference("${vault:kv/snowflake#password@3}")
    assert (ref.kind, ref.target, ref.key, ref.version) == ("vault", "kv/snowflake", "password", 3)
    assert parse_reference("${vault-db:crm-readonly#username}").key == "username"
    assert parse_reference("${vault-db:crm-readonly}").key is None
    assert parse_reference("${env:VAULT_ADDR}").target == "VAULT_ADDR"
    for bad in ("${vault:no-key}", "${env:1X}", "${valut:x#y}", "plain"):
        with pytest.raises(SecretError):
            parse_reference(bad)
    with pytest.raises(SecretError, match="template"):
        parse_reference("${vault:db/{{ region }}#pw}")


def test_env_and_file_references(tmp_path: Path):
    (tmp_path / "token.txt").write_text("file-secret-value\n")
    environ = {"API_KEY": "env-secret-value"}
    with Resolver(base_dir=tmp_path, environ=environ) as resolver:
        out = resolver.resolve(
            {
                "key": "${env:API_KEY}",
                "nested": [{"token": "${file:token.txt}"}],
                "url": "https://x/?k=${env:API_KEY}&t=1",
                "literal": "costs $${env:API_KEY}",
                "number": 3,
            }
        )
        assert isinstance(out["key"], SecretStr)
        assert reveal(out) == {
            "key": "env-secret-value",
            "nested": [{"token": "file-secret-value"}],
            "url": "https://x/?k=env-secret-value&t=1",
            "literal": "costs ${env:API_KEY}",
            "number": 3,
        }
        with pytest.raises(SecretError, match="MISSING_VAR is not set") as missing:
            resolver.resolve({"a": {"b": "${env:MISSING_VAR}"}})
        assert missing.value.key == "a.b"
        with pytest.raises(SecretError, match=r"nope\.txt does not exist"):
            resolver.resolve("${file:nope.txt}")
        with pytest.raises(SecretError, match="needs Vault"):
            resolver.resolve("${vault:mdstack/app#pw}")


def test_secrets_config_is_strict():
    with pytest.raises(ValidationError):
        SecretsConfig.model_validate({"vault": {"auth": {"method": "token"}}})  # no token
    with pytest.raises(ValidationError):
        settings(auth={"method": "approle", "secret_id": "${vault:x#y}"})
    with pytest.raises(ValidationError):
        SecretsConfig.model_validate({"vault": {"auth": APPROLE, "kv_mnt": "kv"}})
    config = settings(auth={"method": "token", "token": "s.literal-token-in-yaml"})
    assert "literal-token" not in repr(config)


# -- Vault: login, KV v2, errors ---------------------------------------------------


def test_approle_login_reads_kv_versions(env, kv):
    with Resolver(settings(), environ=env) as resolver:
        out = resolver.resolve(
            {
                "latest": "${vault:mdstack/app#pw}",
                "first": "${vault:mdstack/app#pw@1}",
                "mounted": "${vault:secret/mdstack/app#pw@2}",  # leading kv_mount accepted
                "dsn": "postgres://${vault:mdstack/app#user}:${vault:mdstack/app#pw}@db/x",
            }
        )
        assert reveal(out) == {
            "latest": kv["v2"],
            "first": kv["v1"],
            "mounted": kv["v2"],
            "dsn": f"postgres://svc-user:{kv['v2']}@db/x",
        }
        assert all(isinstance(out[k], SecretStr) for k in ("latest", "first", "mounted"))
        for text in (repr(out), str(out)):
            assert kv["v1"] not in text and kv["v2"] not in text


def test_values_are_cached_for_the_run(vault: DevVault, env):
    root = vault.client()
    root.secrets.kv.v2.create_or_update_secret(path="mdstack/cached", secret={"k": "before-1"})
    with Resolver(settings(), environ=env) as resolver:
        first = resolver.lookup("${vault:mdstack/cached#k}")
        root.secrets.kv.v2.create_or_update_secret(path="mdstack/cached", secret={"k": "after-2"})
        assert resolver.lookup("${vault:mdstack/cached#k}") == first  # one run, one value
    with Resolver(settings(), environ=env) as resolver:
        assert reveal(resolver.lookup("${vault:mdstack/cached#k}")) == "after-2"


def test_never_falls_back_to_vault_token_or_token_file(vault: DevVault, env, kv, monkeypatch):
    """The root token sits in VAULT_TOKEN and ~/.vault-token; the resolver ignores both."""
    monkeypatch.setenv("VAULT_TOKEN", vault.root_token)
    (Path.home() / ".vault-token").write_text(vault.root_token)
    try:
        with Resolver(settings(), environ=env) as resolver, pytest.raises(SecretError) as denied:
            resolver.lookup("${vault:other/place#k}")  # root could read it; the AppRole cannot
        assert "permission denied" in str(denied.value)
    finally:
        (Path.home() / ".vault-token").unlink()


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("${vault:other/place#k}", ["permission denied", "secret/data/other/place", "#k"]),
        ("${vault:mdstack/nothing-here#pw}", ["no secret at secret/data/mdstack/nothing-here"]),
        ("${vault:mdstack/app#missing}", ["has no key 'missing'", "keys: pw, user"]),
        ("${vault:mdstack/app#pw@9}", ["has no version 9 (latest is 2)", "use @2"]),
        ("${vault-db:other-role#password}", ["permission denied", "database/creds/other-role"]),
    ],
)
def test_errors_name_reference_and_fix_never_the_value(env, kv, reference, expected):
    with Resolver(settings(), environ=env) as resolver, pytest.raises(SecretError) as caught:
        resolver.resolve({"password": reference}, "sources.crm.config")
    error = caught.value
    text = str(error)
    assert reference in text and error.key == "sources.crm.config.password"
    assert all(part in text for part in expected), text
    assert error.hint and not error.retryable
    assert not any(value in text for value in kv.values())


def test_unreachable_vault_is_retryable():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = {"method": "token", "token": "s.whatever"}
    resolver = Resolver(settings(url=f"http://127.0.0.1:{port}", auth=token))
    with resolver, pytest.raises(SecretError, match="unreachable") as caught:
        resolver.lookup("${vault:mdstack/app#pw}")
    assert caught.value.retryable
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_silent_vault_times_out_retryably():
    with socket.socket() as sock:  # accepts connections, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = SecretsConfig.model_validate(
            {"vault": {"url": url, "timeout": 0.3, "auth": {"method": "token", "token": "s.x"}}}
        )
        resolver = Resolver(config)
        with resolver, pytest.raises(SecretError, match="timed out") as caught:
            resolver.lookup("${vault:mdstack/app#pw}")
    assert caught.value.retryable


def test_sealed_vault_says_sealed(throwaway_vault: DevVault):
    throwaway_vault.client().sys.seal()
    token = {"method": "token", "token": "${env:TOKEN}"}
    environ = {"TOKEN": throwaway_vault.root_token}
    resolver = Resolver(settings(url=throwaway_vault.url, auth=token), environ=environ)
    with resolver, pytest.raises(SecretError, match="is sealed") as caught:
        resolver.lookup("${vault:mdstack/app#pw}")
    assert "unseal" in caught.value.hint and not caught.value.retryable
    assert throwaway_vault.root_token not in str(caught.value)


def test_token_is_renewed_past_its_ttl(vault: DevVault, env, kv):
    """A 2 s token outlives a 3.5 s run because the resolver renews it; its twin does not."""
    root = vault.client()

    def short_token() -> str:
        created = root.auth.token.create(policies=["mdstack"], ttl="2s", explicit_max_ttl="60s")
        return created["auth"]["client_token"]

    used, idle = short_token(), short_token()
    token = {"method": "token", "token": "${env:RUN_TOKEN}"}
    with Resolver(settings(auth=token), environ={**env, "RUN_TOKEN": used}) as resolver:
        assert reveal(resolver.lookup("${vault:mdstack/app#pw}")) == kv["v2"]
        time.sleep(3.5)
        assert reveal(resolver.lookup("${vault:mdstack/app#pw@1}")) == kv["v1"]  # not cached
        assert root.auth.token.lookup(used)["data"]["ttl"] > 0
    with pytest.raises(hvac.exceptions.Forbidden):
        root.auth.token.lookup(idle)  # expired: without renewal the run's token would be too
    root.auth.token.lookup(used)  # a configured token is not revoked at close


def test_login_again_when_the_token_reaches_its_max_ttl(vault: DevVault, env, kv, caplog):
    root = vault.client()
    root.write_data(
        "auth/approle/role/mdstack-capped",
        data={"token_policies": ["mdstack"], "token_ttl": "2s", "token_max_ttl": "3s"},
    )
    role_id = root.read("auth/approle/role/mdstack-capped/role-id")["data"]["role_id"]
    secret_id = root.write_data("auth/approle/role/mdstack-capped/secret-id")["data"]["secret_id"]
    environ = {**env, "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id}
    caplog.set_level(logging.INFO, logger="stack")
    with Resolver(settings(), environ=environ) as resolver:
        resolver.lookup("${vault:mdstack/app#pw}")
        time.sleep(4)  # past the 3 s max TTL: no renewal can keep that token alive
        assert reveal(resolver.lookup("${vault:mdstack/app#pw@1}")) == kv["v1"]
    assert "reached its max TTL; logging in again" in caplog.text


def test_jwt_login(vault: DevVault, env, kv):
    jwt = pytest.importorskip("jwt")
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    root = vault.client()
    if "jwt/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("jwt")
    root.write_data("auth/jwt/config", data={"jwt_validation_pubkeys": [public.decode()]})
    root.write_data(
        "auth/jwt/role/mdstack-ci",
        data={
            "role_type": "jwt",
            "bound_audiences": ["mdstack"],
            "user_claim": "sub",
            "token_policies": ["mdstack"],
        },
    )
    now = int(time.time())
    token = jwt.encode(
        {"sub": "ci", "aud": "mdstack", "iat": now, "exp": now + 300}, key, algorithm="RS256"
    )
    auth = {"method": "jwt", "role": "mdstack-ci", "jwt": "${env:CI_JWT}"}
    with Resolver(settings(auth=auth), environ={**env, "CI_JWT": token}) as resolver:
        assert reveal(resolver.lookup("${vault:mdstack/app#pw}")) == kv["v2"]


# -- dynamic database credentials -----------------------------------------------------


def pg_role(server: dict, username: str) -> tuple | None:
    import psycopg

    with psycopg.connect(**connect_kwargs(server)) as conn:
        return conn.execute(
            "SELECT r.rolname, r.rolcanlogin, a.rolpassword FROM pg_roles r "
            "JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = %s",
            (username,),
        ).fetchone()


def scram_matches(verifier: str, password: str) -> bool:
    """Does PostgreSQL's SCRAM-SHA-256 verifier belong to ``password``?

    Local TCP logins use ``trust`` here, so logging in proves the role exists
    but not the password; this proves the password.
    """
    iterations_salt, keys = verifier.removeprefix("SCRAM-SHA-256$").split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key = base64.b64decode(keys.split(":")[0])
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hashlib.sha256(client_key).digest() == stored_key


def can_log_in(server: dict, username: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(**connect_kwargs(server | {"user": username})) as conn:
            return conn.execute("SELECT count(*) FROM pg_tables").fetchone()[0] > 0
    except psycopg.OperationalError:
        return False


def test_dynamic_credentials_one_lease_revoked_at_close(env, caplog, pg_database):
    caplog.set_level(logging.INFO, logger="stack")
    config = {
        "user": "${vault-db:mdstack-readonly#username}",
        "password": "${vault-db:mdstack-readonly#password}",
        "whole": "${vault-db:mdstack-readonly}",
    }
    with Resolver(settings(), environ=env) as resolver:
        creds = reveal(resolver.resolve(config))
        (lease,) = resolver.leases  # username and password come from ONE lease
        assert isinstance(lease, DbCredentials)
        assert creds["whole"] == {"username": creds["user"], "password": creds["password"]}
        assert creds["password"] not in repr(lease)
        _, can_login, verifier = pg_role(pg_database, creds["user"])
        assert can_login and scram_matches(verifier, creds["password"])
        assert can_log_in(pg_database, creds["user"])
    assert "revoked lease database/creds/mdstack-readonly/" in caplog.text  # by the policy
    assert "could not revoke" not in caplog.text
    assert pg_role(pg_database, creds["user"]) is None  # revoked at close: the role is dropped
    assert not can_log_in(pg_database, creds["user"])


def test_dynamic_credentials_revoked_when_the_run_fails(env, pg_database):
    with pytest.raises(RuntimeError), Resolver(settings(), environ=env) as resolver:
        user = reveal(resolver.lookup("${vault-db:mdstack-readonly#username}"))
        assert pg_role(pg_database, user) is not None
        raise RuntimeError("the sync failed")
    assert pg_role(pg_database, user) is None


def test_lease_is_renewed_while_the_run_lasts(vault: DevVault, env, pg_database):
    vault.client().write_data(
        "database/roles/mdstack-short",
        data={
            "db_name": "mdstack-postgres",
            "default_ttl": "2s",
            "max_ttl": "60s",
            "creation_statements": [
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                "VALID UNTIL '{{expiration}}';"
            ],
        },
    )
    with Resolver(settings(), environ=env) as resolver:
        user = reveal(resolver.lookup("${vault-db:mdstack-short#username}"))
        (lease,) = resolver.leases
        time.sleep(3.5)  # past the 2 s TTL: Vault would have dropped the role by now
        assert pg_role(pg_database, user) is not None
        assert vault.client().sys.read_lease(lease.lease_id)["data"]["ttl"] > 0
    assert pg_role(pg_database, user) is None


def test_check_references_reports_without_values(tmp_path: Path, env, kv):
    config = {
        "secrets": {"vault": {"url": "${env:VAULT_ADDR}", "auth": APPROLE}},
        "sources": {
            "crm": {
                "config": {
                    "user": "${vault-db:mdstack-readonly#username}",
                    "password": "${vault-db:mdstack-readonly#password}",
                    "api": ["${vault:mdstack/app#pw}", "${vault:other/place#k}"],
                    "dsn": "x://${env:NOT_SET_ANYWHERE}@h",
                }
            }
        },
    }
    checks = check_references(config, lambda: Resolver(settings(), environ=env))
    by_location = {(c.location, c.reference): c for c in checks}
    assert [c.ok for c in checks] == [True, True, True, True, False, False]
    denied = by_location[("sources.crm.config.api[1]", "${vault:other/place#k}")]
    assert "permission denied" in denied.error
    assert by_location[("secrets.vault.url", "${env:VAULT_ADDR}")].ok  # the login refs too
    assert "NOT_SET_ANYWHERE is not set" in checks[-1].error
    text = repr(checks)
    assert not any(value in text for value in kv.values())


# -- redaction ---------------------------------------------------------------------------


def test_logs_and_exceptions_never_show_a_secret(env, kv, caplog):
    install_redaction()
    late = io.StringIO()  # a handler added after install: the record factory covers it
    handler = logging.StreamHandler(late)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    caplog.set_level(logging.INFO)
    try:
        weird = "p@ss/w0rd+" + secrets.token_urlsafe(8)
        with Resolver(settings(), environ={**env, "WEIRD": weird}) as resolver:
            value = reveal(resolver.lookup("${vault:mdstack/app#pw}"))
            reveal(resolver.lookup("${env:WEIRD}"))
            log = logging.getLogger("stack.x")
            log.info("token=%s", value)
            log.info("dict %s and url %s", {"password": value}, f"https://u:{quote(weird)}@h")
            logging.getLogger("connectors.pg").warning(f"f-string with {weird}")
            try:
                raise ConnectionError(f"login failed for password {value}")
            except ConnectionError as exc:
                log.exception("sync failed")
                message = redact(str(exc))
    finally:
        logging.getLogger().removeHandler(handler)
    captured = caplog.text + late.getvalue() + message
    for secret in (value, weird, quote(weird, safe="")):
        assert secret not in captured
    assert "token=***" in caplog.text and "token=***" in late.getvalue()
    assert message == "login failed for password ***"
    (failed,) = [r for r in caplog.records if r.getMessage() == "sync failed"]
    assert "password ***" in failed.exc_text and failed.exc_info is None  # Rich can't leak it


def test_install_redaction_is_idempotent():
    first, second = install_redaction(), install_redaction()
    assert first is second
    for name in ("stack", "connectors", "dbt", "prefect"):
        assert logging.getLogger(name).filters.count(first) == 1
    factory = logging.getLogRecordFactory()
    install_redaction()
    assert logging.getLogRecordFactory() is factory


def test_short_values_are_not_registered():
    register_secret("abc")
    register_secret("long-enough-secret")
    assert redact("abc long-enough-secret") == "abc ***"


def test_postgres_source_syncs_as_a_leased_user_that_is_gone_after_the_run(
    tmp_path: Path, env, monkeypatch, pg_database
):
    import psycopg
    import yaml

    from stack.run import pipeline
    from stack.warehouse.duckdb import DuckDBWarehouse

    view = f"mdstack_whoami_{secrets.token_hex(4)}"
    with psycopg.connect(**connect_kwargs(pg_database), autocommit=True) as conn:
        conn.execute(f"CREATE VIEW public.{view} AS SELECT 1 AS id, current_user::text AS who")
    try:
        config = {
            "name": "leased",
            "target": "local",
            "targets": {"local": {"type": "duckdb", "path": str(tmp_path / "wh")}},
            "secrets": {"vault": {"auth": {"method": "approle"}}},
            "sources": {
                "crm": {
                    "connector": "postgres",
                    "config": {
                        "host": "127.0.0.1",
                        "port": pg_database["port"],
                        "database": pg_database["database"],
                        "tables": [view],
                        "user": "${vault-db:mdstack-readonly#username}",
                        "password": "${vault-db:mdstack-readonly#password}",
                    },
                    "schema": "raw_crm",
                    "streams": {view: {"sync": "full_refresh_overwrite"}},
                }
            },
        }
        path = tmp_path / "stack.yml"
        path.write_text(yaml.safe_dump(config))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        selection = pipeline.select(pipeline.load_config(path), "default", ["crm"], [view])
        (entry,) = pipeline.sync_selection(path, None, selection, "r1")
        assert entry.status == "succeeded" and entry.inserted == 1
        with DuckDBWarehouse(tmp_path / "wh") as wh:
            who = wh.query(f"SELECT who FROM raw_crm.{view}").column(0)[0].as_py()
    finally:
        with psycopg.connect(**connect_kwargs(pg_database), autocommit=True) as conn:
            conn.execute(f"DROP VIEW public.{view}")
    assert who.startswith("v-approle-mdstack-")  # the source ran as the leased user
    assert pg_role(pg_database, who) is None and not can_log_in(
        pg_database, who
    )  # revoked when the step ended
