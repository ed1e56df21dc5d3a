"""What a new project starts with, per kind of source: the source's name and its streams.

The demo's streams are the simulator's own, read from its catalog (offline), so a new demo
project syncs every stream it has. The other kinds start from one placeholder stream: the
one their ``stack.yml`` template names, with the key and cursor that template declares,
which a user replaces with their own tables or endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from connectors.base import StreamSpec
from connectors.demo import DemoSource

__all__ = ["SOURCE_KINDS", "WAREHOUSE_KINDS", "SourceKind", "Starter", "Stream", "WarehouseKind"]

SourceKind = Literal["demo", "postgres", "rest", "files", "airbyte"]
WarehouseKind = Literal["duckdb", "snowflake"]
SOURCE_KINDS: tuple[SourceKind, ...] = get_args(SourceKind)
WAREHOUSE_KINDS: tuple[WarehouseKind, ...] = get_args(WarehouseKind)


@dataclass(frozen=True)
class Stream:
    """A stream of the new source: the columns its staging model selects, and its key."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    settings: str = "{sync: incremental_deduped}"
    """Its entry under the source's ``streams:`` in ``stack.yml`` (YAML flow style)."""


@dataclass(frozen=True)
class Starter:
    """The source a new project declares: connector, name (in stack.yml and dbt), streams.

    ``placeholder``: the streams stand for the user's own, whose columns init cannot know.
    """

    connector: SourceKind
    name: str
    streams: tuple[Stream, ...]
    placeholder: bool = True

    @property
    def schema(self) -> str:
        """The warehouse schema the source lands in."""
        return f"raw_{self.name}"


_BY_CURSOR = "{sync: incremental_deduped, cursor: updated_at}"


def starter(kind: SourceKind) -> Starter:
    """The starting source of a ``kind`` project."""
    if kind == "demo":
        catalog = DemoSource("shop", {"region": "eu"}).discover()
        return Starter("demo", "shop", tuple(_demo_stream(s) for s in catalog.streams), False)
    placeholders: dict[SourceKind, tuple[str, Stream]] = {
        "postgres": ("app_db", Stream("customers", ("id", "updated_at"), ("id",), _BY_CURSOR)),
        "rest": ("api", Stream("items", ("id", "updated_at"), ("id",))),
        "files": ("landing", Stream("orders", ("_file", "_row"), ("_file", "_row"))),
        "airbyte": ("faker", Stream("users", ("id", "updated_at"), ("id",))),
    }
    name, stream = placeholders[kind]
    return Starter(kind, name, (stream,))


def _demo_stream(spec: StreamSpec) -> Stream:
    """Deduped where the stream allows it, deletes kept as soft-deleted rows (staging drops
    them), else the full snapshot each run."""
    if "incremental_deduped" in spec.sync_modes and spec.primary_key:
        deletes = ", deletes: soft" if spec.emits_deletes else ""
        settings = f"{{sync: incremental_deduped{deletes}}}"
    else:
        settings = "{sync: full_refresh_overwrite}"
    return Stream(spec.name, tuple(spec.schema.names), spec.primary_key, settings)
