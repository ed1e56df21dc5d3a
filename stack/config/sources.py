"""The ``sources:`` section of ``stack.yml``: a connector, its config, and how each stream syncs.

Also the vocabularies a stream's settings choose from: :data:`SchemaPolicy` (what a
schema change does, applied by :mod:`stack.load.schema`), :data:`DeleteMode` and
:data:`BadRecordPolicy`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.base import SyncMode
from stack.config.durations import Duration

__all__ = [
    "IDENTIFIER",
    "BadRecordPolicy",
    "DeleteMode",
    "SchemaPolicy",
    "SourceConfig",
    "StreamConfig",
    "SyncSetting",
]

SchemaPolicy = Literal["evolve", "freeze", "discard"]
DeleteMode = Literal["hard", "soft", "none"]
BadRecordPolicy = Literal["fail", "quarantine"]
SyncSetting = Literal[SyncMode, "incremental_deduped_history"]
"""A stream's ``sync:``: a source's sync mode, or ``incremental_deduped_history`` (every
version of every row kept, read as ``incremental_deduped``: :mod:`stack.load.history`)."""
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""A name that is also a warehouse identifier (a pipeline's, a source's schema)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamConfig(_Model):
    """How one stream is synced. Keys and cursor default to what the source declares."""

    sync: SyncSetting = "incremental_deduped"
    primary_key: tuple[str, ...] | None = None
    cursor: str | None = None
    deletes: DeleteMode = "hard"
    delete_detection: Literal["snapshot"] | None = None
    delete_window: Duration | None = None
    columns: tuple[str, ...] | None = None
    schema_policy: SchemaPolicy | None = None
    on_bad_record: BadRecordPolicy = "fail"


class SourceConfig(_Model):
    """A source: which connector, its config, the schema it lands in, its streams."""

    connector: str
    config: dict[str, Any] = Field(default_factory=dict)
    schema_: str = Field(alias="schema", pattern=IDENTIFIER)
    schema_policy: SchemaPolicy = "evolve"
    streams: dict[str, StreamConfig]
    concurrency: int = Field(default=1, ge=1)
    """Streams of this source synced at once (one by default: an API's rate limit or a
    database's connections are the source's to give; raise it where they allow more)."""

    @field_validator("streams")
    @classmethod
    def _some_streams(cls, streams: dict[str, StreamConfig]) -> dict[str, StreamConfig]:
        if not streams:
            raise ValueError("a source needs at least one stream")
        return streams
