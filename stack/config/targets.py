"""The ``targets:`` section of ``stack.yml``: where the warehouse is, one model per kind.

:data:`Target` is a :class:`DuckDBTarget` or a :class:`SnowflakeTarget`, told apart by
``type``; :mod:`stack.warehouse` opens one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stack.config.durations import Duration

__all__ = [
    "TARGET_TYPES",
    "BiFile",
    "DuckDBTarget",
    "ObjectStorage",
    "PostgresCatalog",
    "SnowflakeTarget",
    "Target",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PostgresCatalog(_Model):
    """DuckLake's catalog in a PostgreSQL database: several processes, on several machines,
    write one lake at once (each commit is a PostgreSQL transaction; DuckLake retries one
    that raced another when their changes do not conflict)."""

    type: Literal["postgres"]
    host: str
    port: int = Field(default=5432, ge=1, le=65535)
    database: str
    user: str
    password: str | None = None
    """A secret reference (``${vault:kv/lake#password}``), resolved at run time."""
    schema_: str = Field(default="ducklake", alias="schema", pattern=r"^[a-z_][a-z0-9_]*$")
    """The PostgreSQL schema holding the catalog's tables: one lake per schema."""
    sslmode: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ObjectStorage(_Model):
    """How DuckDB reaches an ``s3://`` data_path (its httpfs extension): AWS S3 by default,
    or an S3-compatible server (MinIO, Ceph, R2...) at ``endpoint``. Without it DuckDB
    uses its own defaults: AWS, no credentials."""

    endpoint: str | None = None
    """``host:port`` of an S3-compatible server; default AWS (``s3.amazonaws.com``)."""
    region: str | None = None
    key_id: str | None = None
    """A secret reference (``${vault:kv/lake#key_id}``), resolved at run time."""
    secret: str | None = None
    """A secret reference (``${vault:kv/lake#secret}``), resolved at run time."""
    url_style: Literal["path", "vhost"] | None = None
    """``path`` (``endpoint/bucket/key``, most S3-compatible servers) or ``vhost``
    (``bucket.endpoint/key``, AWS's default)."""
    use_ssl: bool = True
    """HTTPS; ``false`` for a server that speaks plain HTTP (a local MinIO)."""

    @model_validator(mode="after")
    def _checked(self) -> ObjectStorage:
        if self.endpoint is not None and "://" in self.endpoint:
            raise ValueError(
                f"storage.endpoint is host:port, without a scheme (got {self.endpoint!r}): "
                "write `endpoint: 127.0.0.1:9000`, and `use_ssl: false` for plain HTTP"
            )
        if (self.key_id is None) != (self.secret is None):
            raise ValueError(
                "storage.key_id and storage.secret go together: set both (secret references"
                " such as ${vault:kv/lake#key_id}), or neither for DuckDB's defaults"
            )
        return self


class BiFile(_Model):
    """A plain DuckDB database file of the published schemas, for BI tools: rewritten after
    every good publish and swapped in one rename (readers see the old file or the new)."""

    path: Path
    """The file (relative to ``stack.yml``); point the BI tool's DuckDB connection here,
    read-only (``duckdb:///<path>?access_mode=read_only`` for Superset)."""
    schemas: list[str] = Field(default_factory=lambda: ["marts"], min_length=1)
    """The schemas copied: dbt's marts by default; add ``raw`` for the loaded tables."""

    @model_validator(mode="after")
    def _name_is_not_a_schema(self) -> BiFile:
        if self.path.stem in self.schemas:  # DuckDB names the database after the file
            raise ValueError(
                f"bi_file.path {str(self.path)!r}: a file named like the schema"
                f" {self.path.stem!r} makes `{self.path.stem}.<table>` ambiguous in every"
                " query (DuckDB names the database after the file); name it e.g. bi.duckdb"
            )
        return self


class DuckDBTarget(_Model):
    """DuckDB on DuckLake: a catalog plus a folder of Parquet files, no server."""

    type: Literal["duckdb"]
    path: Path = Path("warehouse")
    """The warehouse folder: the catalog file (unless ``catalog:`` is set), the data files
    (unless ``data_path:`` is set), temporary files and extensions."""
    catalog: PostgresCatalog | None = None
    """Where the catalog lives; default: the DuckDB file ``<path>/catalog.ducklake``, which
    one process writes at a time."""
    data_path: str | None = None
    """Where the lake's Parquet files are, seen alike by every writer (with a PostgreSQL
    catalog): a folder every machine mounts at the same path, or object storage
    (``s3://bucket/prefix/``); default ``<path>/data``."""
    storage: ObjectStorage | None = None
    """How to reach an ``s3://`` data_path: endpoint, region, credentials."""
    bi_file: BiFile | None = None
    """A DuckDB file of the published marts for BI tools (a DuckLake catalog is metadata,
    not tables a BI tool's DuckDB driver can show); none by default."""
    retention: Duration | None = None
    """How long the lake's snapshots are kept for ``--as-of`` and ``mdstack diff``:
    ``mdstack expire`` removes older ones and their files (``30d``); none: all kept."""

    @model_validator(mode="after")
    def _data_path_needs_a_shared_catalog(self) -> DuckDBTarget:
        if self.data_path is not None and self.catalog is None:
            raise ValueError(
                "data_path is for a lake with a PostgreSQL catalog (`catalog: {type:"
                " postgres, ...}`); a DuckDB-file catalog keeps its data in <path>/data"
            )
        data_path = self.data_path or ""
        remote = "://" in data_path
        if remote and not data_path.startswith("s3://"):
            raise ValueError(
                f"data_path {data_path!r}: the object storage supported is S3 and"
                " S3-compatible servers; write `data_path: s3://bucket/prefix/`, or a folder"
            )
        if self.storage is not None and not remote:
            raise ValueError(
                "storage is for object storage: set `data_path: s3://bucket/prefix/`, or"
                " remove `storage:` (a folder needs none)"
            )
        return self

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
    retention: Duration | None = None
    """Keep each run's version this long as a zero-copy clone of the database, for
    ``--as-of`` and ``clone --as-of`` of runs time travel cannot reach (dbt replaces its
    table models on every run; a publish by ``SWAP WITH`` makes every table anew);
    ``mdstack expire`` drops older ones (``7d``). None: runs are read through time
    travel alone."""
    fakesnow: bool = False
    """The target is a fakesnow server (local development): turns on the adapter's
    workarounds for what fakesnow cannot run (README, "The warehouse: Snowflake")."""


Target = Annotated[DuckDBTarget | SnowflakeTarget, Field(discriminator="type")]
TARGET_TYPES = ("duckdb", "snowflake")
