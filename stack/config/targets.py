"""The ``targets:`` section of ``stack.yml``: where the warehouse is, one model per kind.

:data:`Target` is a :class:`DuckDBTarget` or a :class:`SnowflakeTarget`, told apart by
``type``; :mod:`stack.warehouse` opens one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TARGET_TYPES", "DuckDBTarget", "SnowflakeTarget", "Target"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DuckDBTarget(_Model):
    """DuckDB on DuckLake: a catalog plus a folder of Parquet files, no server."""

    type: Literal["duckdb"]
    path: Path = Path("warehouse")
    threads: int = Field(default=4, ge=1)
    memory_limit: str = "1GB"
    """DuckDB's memory limit; staged data beyond it spills to ``<path>/.tmp``."""
    busy_timeout: float = Field(default=600.0, gt=0)
    """Seconds to wait for another process (e.g. another region's run) to let go of the
    warehouse before failing as busy (retryable): one process writes a DuckDB file at a
    time, so concurrent runs take turns rather than fail."""


class SnowflakeTarget(_Model):
    """Snowflake through snowflake-connector-python. Credentials should be references
    (``${vault:...}``, ``${env:...}``), resolved at run time, never written here."""

    type: Literal["snowflake"]
    account: str
    user: str
    password: str | None = None
    private_key: str | None = None
    """PEM text of the key-pair private key (usually a ``${vault:...}`` reference)."""
    private_key_passphrase: str | None = None
    authenticator: str | None = None
    """``externalbrowser``, ``oauth`` (with ``token``), ``snowflake_jwt``…; default: password."""
    token: str | None = None
    role: str | None = None
    warehouse: str | None = None
    database: str
    schema_: str = Field(default="PUBLIC", alias="schema")
    threads: int = Field(default=4, ge=1)
    host: str | None = None
    """Connect here instead of ``<account>.snowflakecomputing.com`` (a proxy, or fakesnow)."""
    port: int | None = None
    protocol: Literal["https", "http"] | None = None
    fakesnow: bool = False
    """The target is a fakesnow server (local development): turns on the adapter's
    workarounds for what fakesnow cannot run (README, "The warehouse: Snowflake")."""


Target = Annotated[DuckDBTarget | SnowflakeTarget, Field(discriminator="type")]
TARGET_TYPES = ("duckdb", "snowflake")
