"""How to log in to Snowflake: the connector's arguments and dbt's profile output.

A target names its credentials as secrets (``str`` or ``SecretStr``, already
resolved): :func:`connect_kwargs` turns them into ``snowflake.connector.connect``
arguments (key pair, OAuth, an external authenticator or a password), and
:func:`dbt_output` / :func:`dbt_env` into a dbt-snowflake profile whose
credentials are ``env_var`` references to :data:`DBT_ENV` (dbt masks them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from stack.config.targets import SnowflakeTarget
from stack.errors import WarehouseError

__all__ = [
    "DBT_ENV",
    "connect_kwargs",
    "dbt_env",
    "dbt_env_fields",
    "dbt_output",
    "describe",
    "endpoint",
    "private_key_der",
    "secret_text",
]

DBT_ENV = {
    "password": "DBT_ENV_SECRET_SNOWFLAKE_PASSWORD",
    "private_key": "DBT_ENV_SECRET_SNOWFLAKE_PRIVATE_KEY",
    "private_key_passphrase": "DBT_ENV_SECRET_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE",
    "token": "DBT_ENV_SECRET_SNOWFLAKE_TOKEN",
}
"""Environment variables the dbt profile reads credentials from (dbt masks ``DBT_ENV_SECRET_*``)."""


# -- the connector -------------------------------------------------------------------------------
def endpoint(target: SnowflakeTarget) -> dict[str, Any]:
    """``host``/``port``/``protocol`` set on the target (a proxy or a fakesnow server)."""
    fields = {"host": target.host, "port": target.port, "protocol": target.protocol}
    return {name: value for name, value in fields.items() if value is not None}


def secret_text(value: object) -> str | None:
    """The plain text of a resolved credential field (``SecretStr`` or ``str``), else ``None``."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value if isinstance(value, str) else None


def connect_kwargs(
    target: SnowflakeTarget,
    query_tag: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``snowflake.connector.connect`` from a target.

    Authentication: ``private_key`` (PEM text, passphrase optional) -> key pair
    (``SNOWFLAKE_JWT``, the key passed as DER bytes); ``authenticator: oauth`` ->
    ``token``; ``externalbrowser`` and others -> as named; else the password.

    Raises:
        WarehouseError: a credential is missing or the private key cannot be read.
    """
    tag = json.dumps({"app": "mdstack", **(query_tag or {})}, sort_keys=True)
    if len(tag) > 2000:
        raise WarehouseError("the Snowflake QUERY_TAG is longer than 2000 characters")
    extra = dict(extra or {})
    kwargs = {**_session(target), "application": "mdstack", "paramstyle": "qmark"}
    kwargs.update(_auth(target))
    parameters = {**extra.pop("session_parameters", {}), "QUERY_TAG": tag}
    return {**kwargs, **extra, "session_parameters": parameters}


def _session(target: SnowflakeTarget) -> dict[str, Any]:
    """What the connector and dbt's profile both take from the target: who, where, no keep-alive."""
    fields: dict[str, Any] = {
        "account": target.account,
        "user": target.user,
        "database": target.database,
        "client_session_keep_alive": False,
    }
    if target.role:
        fields["role"] = target.role
    if target.warehouse:
        fields["warehouse"] = target.warehouse
    return fields


def _auth(target: SnowflakeTarget) -> dict[str, Any]:
    authenticator = (target.authenticator or "").lower()
    password, token = secret_text(target.password), secret_text(target.token)
    if pem := secret_text(target.private_key):
        passphrase = secret_text(target.private_key_passphrase)
        return {"authenticator": "SNOWFLAKE_JWT", "private_key": private_key_der(pem, passphrase)}
    if authenticator == "oauth":
        if not token:
            raise WarehouseError(
                "authenticator oauth needs a token", hint="set `token` on the Snowflake target"
            )
        return {"authenticator": "oauth", "token": token}
    if authenticator:
        extra = {"password": password} if password else {}
        return {
            "authenticator": target.authenticator,
            **extra,
            **({"token": token} if token else {}),
        }
    if not password:
        raise WarehouseError(
            "no Snowflake credentials: the target has no password, private_key or authenticator",
            hint="set `password`, `private_key` or `authenticator` (externalbrowser, oauth) "
            "on the Snowflake target, as a secret reference",
        )
    return {"password": password}


def private_key_der(pem: str, passphrase: str | None = None) -> bytes:
    """The DER (PKCS#8, unencrypted) bytes of a PEM private key, as the connector takes them.

    Raises:
        WarehouseError: the key is not PEM, or the passphrase is wrong or missing.
    """
    from cryptography.hazmat.primitives import serialization

    if "\\n" in pem and "\n" not in pem:  # a PEM squeezed into one line (env vars)
        pem = pem.replace("\\n", "\n")
    try:
        key = serialization.load_pem_private_key(
            pem.strip().encode(), password=passphrase.encode() if passphrase else None
        )
    except (ValueError, TypeError) as exc:
        raise WarehouseError(
            f"cannot read the Snowflake private key: {type(exc).__name__}",
            hint="private_key must be the PEM text of the key (-----BEGIN PRIVATE KEY-----); "
            "an encrypted key needs private_key_passphrase",
        ) from exc
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


_SECRET_KWARGS = ("password", "token", "private_key", "passcode")


def describe(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Connect arguments fit for a log line: credentials masked."""
    return {k: ("***" if k in _SECRET_KWARGS else v) for k, v in kwargs.items()}


# -- dbt --------------------------------------------------------------------------------------
def dbt_output(
    target: SnowflakeTarget, query_tag: Mapping[str, str], connect_args: Mapping[str, Any]
) -> dict[str, Any]:
    """The dbt-snowflake profile output; credentials are ``env_var`` references.

    Pass :func:`dbt_env` to dbt's environment (``run_dbt(env=wh.dbt_env())``):
    without it dbt cannot log in.
    """
    output: dict[str, Any] = {
        "type": "snowflake",
        **_session(target),
        "schema": target.schema_,
        "threads": target.threads,
        "query_tag": json.dumps(query_tag, sort_keys=True),
    }
    if target.authenticator and not target.private_key:
        output["authenticator"] = target.authenticator
    for field in ("host", "port", "protocol"):  # a test server (fakesnow) or a proxy
        if field in connect_args:
            output[field] = connect_args[field]
    for field in dbt_env_fields(target):
        output[field] = "{{ env_var('" + DBT_ENV[field] + "') }}"
    return output


def dbt_env_fields(target: SnowflakeTarget) -> dict[str, str]:
    """The credential fields set on the target and their values, in :data:`DBT_ENV` order."""
    return {f: value for f in DBT_ENV if (value := secret_text(getattr(target, f)))}


def dbt_env(target: SnowflakeTarget) -> dict[str, str]:
    """Environment values for :func:`dbt_output`'s ``env_var`` references (secrets)."""
    return {DBT_ENV[f]: value for f, value in dbt_env_fields(target).items()}
