"""A DuckLake whose data files are in object storage (``data_path: s3://bucket/prefix/``).

* **Extension**: DuckDB reads and writes ``s3://`` through its httpfs extension, linked
  offline from the ``duckdb-extension-httpfs`` wheel next to DuckLake's; DuckDB autoloads
  it at the first ``s3://`` path.
* **Credentials** never appear in a statement: they go into a temporary DuckDB secret of
  type s3, as parameters, scoped to the lake's data path (so they are used for the lake's
  files only); dbt reads them from environment variables its profile names. The variables
  carry dbt's ``DBT_ENV_SECRET_`` prefix: dbt scrubs their values from its logs.
* The catalog (PostgreSQL) says which files make up each table: nothing is listed in the
  bucket, and several machines write one lake without sharing a file system.
"""

from __future__ import annotations

from typing import Any

import duckdb

from stack.config.targets import ObjectStorage

KEY_ID_ENV = "DBT_ENV_SECRET_MDSTACK_LAKE_STORAGE_KEY_ID"
SECRET_ENV = "DBT_ENV_SECRET_MDSTACK_LAKE_STORAGE_SECRET"
"""The environment variables dbt's profile reads the storage's credentials from."""
SECRET_NAME = "mdstack_lake_storage"


def is_remote(data_path: str) -> bool:
    """``data_path`` is object storage (validated as ``s3://`` by the target's model)."""
    return "://" in data_path


def create_secret(con: duckdb.DuckDBPyConnection, storage: ObjectStorage, scope: str) -> None:
    """The storage's settings as a temporary s3 secret of ``con``, for paths under ``scope``.

    The values are parameters of the statement, never its text.
    """
    options: dict[str, str | bool] = {"SCOPE": scope, **_settings(storage)}
    if storage.key_id is not None and storage.secret is not None:
        options |= {"KEY_ID": storage.key_id, "SECRET": storage.secret}
    names = ", ".join(f"{name} ?" for name in options)
    con.execute(f"CREATE TEMPORARY SECRET {SECRET_NAME} (TYPE s3, {names})", list(options.values()))


def dbt_secret(storage: ObjectStorage, scope: str) -> dict[str, Any]:
    """The same secret as an entry of a dbt-duckdb profile's ``secrets:``; the credentials
    are ``env_var`` lookups of :func:`dbt_env`'s variables."""
    entry: dict[str, Any] = {"type": "s3", "scope": scope}
    for name, value in _settings(storage).items():
        entry[name.lower()] = str(value).lower() if isinstance(value, bool) else value
    if storage.key_id is not None:
        entry["key_id"] = "{{ env_var('" + KEY_ID_ENV + "') }}"
        entry["secret"] = "{{ env_var('" + SECRET_ENV + "') }}"
    return entry


def dbt_env(storage: ObjectStorage) -> dict[str, str]:
    """The storage's credentials for the variables :func:`dbt_secret` names."""
    if storage.key_id is None or storage.secret is None:
        return {}
    return {KEY_ID_ENV: storage.key_id, SECRET_ENV: storage.secret}


def credentials(storage: ObjectStorage | None) -> list[str]:
    """The values an error text must not show."""
    if storage is None:
        return []
    return [value for value in (storage.key_id, storage.secret) if value]


def _settings(storage: ObjectStorage) -> dict[str, str | bool]:
    """The secret's options other than the credentials, by DuckDB's names, when set."""
    options: dict[str, str | bool | None] = {
        "ENDPOINT": storage.endpoint,
        "REGION": storage.region,
        "URL_STYLE": storage.url_style,
        "USE_SSL": storage.use_ssl,
    }
    return {name: value for name, value in options.items() if value is not None}
