"""Config of the files source: one pydantic model, from which ``spec()`` is derived.

See :mod:`connectors.files.source` for what each key means. The per-stream keys may also sit
at the top, as defaults for every stream (a stream's own replace them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import ConfigDict, Field, StrictBool, StrictInt, model_validator

from connectors.config import ConfigProblem, SourceConfig
from connectors.files.formats import Format

TYPES = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", "UTC"),
}
TypeName = Literal["string", "int64", "float64", "bool", "date", "timestamp", "timestamptz"]
"""The names ``types:`` accepts, the keys of :data:`TYPES`."""

Char = Annotated[str, Field(min_length=1, max_length=1)]
_STREAM_KEYS = ("format", "delimiter", "header", "quote", "types", "on_bad_row")


class StreamOptions(SourceConfig):
    """How a stream's files are parsed; at the top, the defaults of every stream."""

    format: Format | None = Field(None, description="csv, jsonl or parquet; default: by name")
    delimiter: Char | None = Field(None, description="one character; default , (tab for .tsv)")
    header: StrictBool = Field(True, description="true or false")
    quote: Char | None = Field('"', description="one character; null turns quoting off")
    types: dict[str, TypeName] = Field(
        default_factory=dict, description="{column: type}, overriding inference"
    )
    on_bad_row: Literal["fail", "skip"] = "fail"

    @model_validator(mode="after")
    def _distinct_delimiter(self) -> StreamOptions:
        if self.delimiter is not None and self.delimiter == self.quote:
            raise ConfigProblem(
                "delimiter and quote must differ", key="delimiter", hint='e.g. quote: "\'"'
            )
        return self


class FileStream(StreamOptions):
    """One stream of a ``streams:`` mapping."""

    url: str = Field(min_length=1, description="path, folder, glob or fsspec URL")


class FilesConfig(StreamOptions):
    """The ``config:`` of a ``connector: files`` source: ``url`` or ``streams``."""

    model_config = ConfigDict(title="files")

    url: str | None = Field(
        None, min_length=1, description="path, folder, glob or fsspec URL: one stream"
    )
    streams: dict[str, FileStream] | None = Field(None, min_length=1)
    batch_size: StrictInt = Field(100_000, ge=1, description="rows per Arrow batch")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec filesystem options"
    )
    sample_bytes: StrictInt = Field(1 << 20, ge=1024, description="head of a file to infer")
    sample_files: StrictInt = Field(10, ge=1, description="newest files whose schemas count")

    @model_validator(mode="before")
    @classmethod
    def _stream_defaults(cls, data: Any) -> Any:
        """Top-level stream keys are defaults under each of ``streams``."""
        if not isinstance(data, Mapping) or not isinstance(data.get("streams"), Mapping):
            return data
        defaults = {k: data[k] for k in _STREAM_KEYS if k in data}
        streams = {
            name: defaults | dict(entry) if isinstance(entry, Mapping) else entry
            for name, entry in data["streams"].items()
        }
        return dict(data) | {"streams": streams}

    @model_validator(mode="after")
    def _one_way(self) -> FilesConfig:
        if (self.url is None) == (self.streams is None):
            raise ConfigProblem(
                "give exactly one of `url` and `streams`",
                key="url",
                hint="set `url:` for one stream, or `streams: {name: {url: ...}}` for several",
            )
        return self

    def stream_configs(self, source: str) -> tuple[StreamConfig, ...]:
        """Each stream with its options: one named after the source for ``url``."""
        if self.url is not None:
            options = self.model_dump(include={*_STREAM_KEYS})
            return (StreamConfig(source, "", FileStream(url=self.url, **options)),)
        streams = self.streams or {}
        return tuple(StreamConfig(n, f"streams.{n}.", s) for n, s in streams.items())


@dataclass(frozen=True)
class StreamConfig:
    """One stream: its name, its keys' prefix in messages, and its url and options."""

    name: str
    prefix: str
    """``""`` for a top-level ``url``, else ``"streams.<name>."``."""
    options: FileStream
