"""The PostgreSQL source's config: one pydantic model, from which ``spec()`` is derived.

The password is a ``SecretStr``: no repr or error shows it. :meth:`PostgresConfig.libpq`
gives the connection parameters, with the session settings the fetch path and the CDC
decoder rely on.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, SecretStr, StrictInt

from connectors.config import ConfigProblem, SourceConfig

SESSION = (
    "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres"
    " -c extra_float_digits=3 -c bytea_output=hex"
)
"""Session settings: the text output the CDC decoder and the query path's casts rely on."""

_ISO_DURATION = re.compile(r"^P(?!$)(\d+[YMWD])*(T(?=\d)(\d+[HM])*(\d+(\.\d+)?S)?)?$")

Name = Annotated[str, Field(min_length=1)]

MAX_READERS = 16
"""Each reader is a server connection (a backend); more than this is rarely faster."""


def _lookback(value: Any) -> Any:
    """Seconds (a number >= 0) or an ISO 8601 duration; refused otherwise."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if value is None or (number and value >= 0):
        return value
    if isinstance(value, str) and _ISO_DURATION.match(value):
        return value
    raise ConfigProblem(
        "not a number of seconds or an ISO 8601 duration",
        hint='seconds (lookback: 3600) or an ISO 8601 duration (lookback: "PT1H")',
    )


class Replication(SourceConfig):
    """CDC through logical replication: one slot per source, shared by its CDC streams."""

    slot: Name = Field("mdstack", description="the source's slot, e.g. mds_{{ region }}")
    publication: Name = Field("mdstack", description="an existing publication")
    plugin: Literal["pgoutput"] = Field(
        "pgoutput",
        description="pgoutput: built into PostgreSQL 10+, needs no extension",
    )
    snapshot_chunk: StrictInt = Field(
        100_000,
        ge=1,
        description="rows per snapshot chunk: the slot advances between chunks",
    )


class PostgresConfig(SourceConfig):
    """The ``config:`` of a ``connector: postgres`` source."""

    model_config = ConfigDict(title="PostgreSQL")

    host: Name
    port: StrictInt = Field(5432, ge=1, le=65535)
    database: Name
    user: Name
    password: SecretStr | None = Field(None, description="e.g. ${vault:db#password}")
    schemas: tuple[Name, ...] = Field(("public",), min_length=1, description="e.g. [public]")
    tables: tuple[Name, ...] | None = Field(
        None, min_length=1, description="an include list: name or schema.name"
    )
    batch_size: StrictInt = Field(16_384, ge=1, description="rows per Arrow batch")
    readers: StrictInt | None = Field(
        None,
        ge=1,
        le=MAX_READERS,
        description=f"connections reading a big table at once, 1 to {MAX_READERS}"
        " (leave it out for min(4, cores))",
    )
    lookback: Annotated[int | float | str | None, BeforeValidator(_lookback)] = Field(
        None, description="seconds or an ISO 8601 duration; cursor units for numeric cursors"
    )
    connect_timeout: StrictInt = Field(10, ge=1, description="seconds")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    replication: Replication | None = Field(None, description="set to read tables by CDC")

    @property
    def secret(self) -> str | None:
        """The password itself, or None when there is none."""
        return (self.password.get_secret_value() or None) if self.password else None

    @property
    def reader_count(self) -> int:
        """``readers``, or min(4, cores): past that the server's CPU, not the client, limits."""
        return self.readers or min(4, os.cpu_count() or 1)

    @property
    def where(self) -> str:
        """``user@host:port/database``, for messages."""
        return f"{self.user}@{self.host}:{self.port}/{self.database}"

    def libpq(self, *, password: bool) -> dict[str, Any]:
        """Connection parameters for psycopg (with the password when ``password``)."""
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.user,
            "connect_timeout": self.connect_timeout,
            "sslmode": self.sslmode,
            "application_name": "mdstack",
            "options": SESSION,
        }
        secret = self.secret
        return params | ({"password": secret} if password and secret else {})
