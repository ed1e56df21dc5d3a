"""The ``checks:`` section of ``stack.yml``: one :class:`Check` per entry.

:mod:`stack.transform.checks` evaluates them on the warehouse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from stack.config.durations import Duration
from stack.config.sizes import Size
from stack.errors import ConfigError
from stack.sql import LOADED_AT

__all__ = [
    "CHECK_KINDS",
    "Check",
    "CheckKind",
    "CheckList",
    "Freshness",
    "Reconcile",
    "ReplicationLag",
    "SchemaExpectation",
    "Severity",
    "Values",
    "Volume",
]

Severity = Literal["warn", "error"]
CheckKind = Literal["freshness", "volume", "schema", "values", "reconcile", "replication_lag"]
CHECK_KINDS: tuple[CheckKind, ...] = get_args(CheckKind)


def _ratio(value: Any) -> Any:
    """``50%`` or ``0.5`` as 0.5."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return float(value.strip()[:-1]) / 100
    return value


Ratio = Annotated[float, BeforeValidator(_ratio), Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Freshness(_Model):
    """The newest ``column`` value (default ``_mds_loaded_at``) is at most ``max_age`` old."""

    column: str = LOADED_AT
    max_age: Duration


class Volume(_Model):
    """Row-count bounds, and the largest change (``50%``) versus the count at the last run."""

    min_rows: int | None = Field(default=None, ge=0)
    max_rows: int | None = Field(default=None, ge=0)
    max_change: Ratio | None = None

    @model_validator(mode="after")
    def _something(self) -> Volume:
        if self.min_rows is None and self.max_rows is None and self.max_change is None:
            raise ValueError("set at least one of min_rows, max_rows, max_change")
        low, high = self.min_rows, self.max_rows
        if low is not None and high is not None and low > high:
            raise ValueError("min_rows is larger than max_rows")
        return self


class SchemaExpectation(_Model):
    """Columns the table must have, with their types (DuckDB names: ``BIGINT``, ``VARCHAR``)."""

    columns: dict[str, str] = Field(min_length=1)
    allow_extra: bool = True
    """Other columns are fine (``_mds_*`` metadata columns always are)."""


Scalar = str | int | float | bool


class Values(_Model):
    """Every row's ``column`` is within ``between`` (bounds inclusive; null: open), in
    ``accepted``, and (with ``not_null``) set. Null values pass ``between`` and ``accepted``."""

    column: str
    between: tuple[float | None, float | None] | None = None
    accepted: tuple[Scalar, ...] | None = Field(default=None, min_length=1)
    not_null: bool = False

    @model_validator(mode="after")
    def _something(self) -> Values:
        if self.between is None and self.accepted is None and not self.not_null:
            raise ValueError("set at least one of between, accepted, not_null")
        return self


class Reconcile(_Model):
    """The table holds as many live rows as the source says it has (within ``tolerance``)."""

    source: str | None = None
    stream: str | None = None
    tolerance: Ratio = 0.0
    """Allowed relative difference (``1%``)."""


class ReplicationLag(_Model):
    """The source's replication slot held back at most ``max`` of WAL at its latest run
    (``_mds_runs.replication_lag_bytes``, recorded by PostgreSQL sources with CDC).

    Sizes: ``1GB``, ``512MB``, ``64 MiB`` or bytes; see :mod:`stack.config.sizes`.
    """

    max: Size


class Check(_Model):
    """One entry of ``checks:`` in ``stack.yml``: a table, stream or source, one kind, a
    severity.

    Example::

        - {table: raw_shop.orders, freshness: {column: updated_at, max_age: 26h}}
        - {stream: shop.orders, volume: {min_rows: 1, max_change: 50%}, severity: warn}
        - {table: marts.marketing_roi, region_column: region,
           values: {column: roi, between: [-1, 100]}}
        - {source: crm, replication_lag: {max: 1GB}}
    """

    table: str | None = Field(default=None, pattern=r"^[^.\s]+\.[^.\s]+$")
    """``schema.table`` in the warehouse."""
    stream: str | None = Field(default=None, pattern=r"^[^.\s]+\.[^.\s]+$")
    """``source.stream``: the table the stream loads (and the default of ``reconcile``)."""
    source: str | None = Field(default=None, pattern=r"^[^.\s]+$")
    """A source of ``sources:``, for ``replication_lag`` (its streams share one slot)."""
    name: str | None = None
    """Unique name (default: ``<kind>:<table>[.<column>]``); a volume check's history key."""
    severity: Severity = "error"
    region_column: str | None = None
    """Column that scopes rows to the run's region (default: ``_mds_region`` when present)."""
    freshness: Freshness | None = None
    volume: Volume | None = None
    schema_: SchemaExpectation | None = Field(default=None, alias="schema")
    values: Values | None = None
    reconcile: Reconcile | None = None
    replication_lag: ReplicationLag | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> Check:
        kinds = [k for k in CHECK_KINDS if self._spec(k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of {', '.join(CHECK_KINDS)}")
        if self.replication_lag is not None:
            if self.source is None or self.table or self.stream or self.region_column:
                raise ValueError(
                    "replication_lag is checked per source, as its streams share one "
                    "replication slot: write `source: <name>` alone, without table, stream "
                    "or region_column"
                )
            return self
        if self.source is not None:
            raise ValueError(
                "`source:` goes with replication_lag; other kinds take `table:` or `stream:`"
            )
        if (self.table is None) == (self.stream is None):
            raise ValueError("give exactly one of `table: schema.table` or `stream: source.stream`")
        partial = self.reconcile and None in (self.reconcile.source, self.reconcile.stream)
        if partial and self.stream is None:
            raise ValueError("reconcile needs `source:` and `stream:` (or use `stream:`)")
        return self

    def _spec(self, kind: str) -> Any:
        return self.schema_ if kind == "schema" else getattr(self, kind)

    @property
    def kind(self) -> CheckKind:
        return next(k for k in CHECK_KINDS if self._spec(k) is not None)

    @property
    def spec(self) -> Freshness | Volume | SchemaExpectation | Values | Reconcile | ReplicationLag:
        return self._spec(self.kind)

    def relation(self, schemas: Mapping[str, str]) -> tuple[str, str]:
        """``(schema, table)`` checked; a stream is found through ``schemas`` (source -> schema)."""
        if self.table is not None:
            schema, _, name = self.table.partition(".")
            return schema, name
        source, _, stream = (self.stream or "").partition(".")
        return schemas[self.known_source(source, schemas)], stream

    def known_source(self, source: str, schemas: Mapping[str, str]) -> str:
        """``source``, when ``schemas`` (source -> schema) declares it.

        Raises:
            ConfigError: ``source`` is not declared.
        """
        if source not in schemas:
            raise ConfigError(
                f"check {self.label!r} names unknown source {source!r}",
                key="checks",
                hint=f"use one of: {', '.join(schemas) or '(none)'}",
            )
        return source

    @property
    def label(self) -> str:
        """The check's name: ``name``, else ``<kind>:<table or stream>[.<column>]``."""
        if self.name:
            return self.name
        column = getattr(self.spec, "column", None)
        where = self.table or self.stream or self.source
        return f"{self.kind}:{where}" + (f".{column}" if column else "")


def duplicate_names(checks: Sequence[Check]) -> list[str]:
    """Names (``Check.label``) that more than one check has."""
    names = [check.label for check in checks]
    return sorted({n for n in names if names.count(n) > 1})


def _unique_names(checks: tuple[Check, ...]) -> tuple[Check, ...]:
    if duplicate := duplicate_names(checks):
        raise ValueError(
            f"checks share the names {duplicate}: give each a distinct `name:` "
            "(results and a volume check's history are kept by name)"
        )
    return checks


CheckList = Annotated[tuple[Check, ...], AfterValidator(_unique_names)]
"""The type of ``StackConfig.checks``: checks with distinct names."""
