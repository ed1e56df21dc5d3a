"""Config of the files source: the JSON Schema and its validation into frozen dataclasses.

See :mod:`connectors.files` for what each key means. :func:`parse_config` raises a
ConnectorError naming the bad key (``format``, ``streams.orders.delimiter``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

import pyarrow as pa

from connectors.errors import ConnectorError
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

_STR = {"type": "string", "minLength": 1}
_STREAM_KEYS: dict[str, Any] = {
    "format": {"enum": list(get_args(Format))},
    "delimiter": {
        "type": "string",
        "minLength": 1,
        "maxLength": 1,
        "description": "default , (a tab for .tsv files)",
    },
    "header": {"type": "boolean", "default": True},
    "quote": {"type": ["string", "null"], "minLength": 1, "maxLength": 1, "default": '"'},
    "types": {"type": "object", "additionalProperties": {"enum": sorted(TYPES)}},
    "on_bad_row": {"enum": ["fail", "skip"], "default": "fail"},
}
SPEC: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Files (CSV, JSON lines, Parquet)",
    "type": "object",
    "additionalProperties": False,
    "oneOf": [{"required": ["url"]}, {"required": ["streams"]}],
    "properties": {
        "url": {**_STR, "description": "path, folder, glob or fsspec URL: one stream"},
        "streams": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "required": ["url"],
                "additionalProperties": False,
                "properties": {"url": _STR, **_STREAM_KEYS},
            },
        },
        **_STREAM_KEYS,
        "batch_size": {"type": "integer", "minimum": 1, "default": 100_000},
        "storage_options": {"type": "object", "description": "fsspec filesystem options"},
        "sample_bytes": {"type": "integer", "minimum": 1024, "default": 1 << 20},
        "sample_files": {"type": "integer", "minimum": 1, "default": 10},
    },
}


@dataclass(frozen=True)
class StreamConfig:
    """One stream's config; ``prefix`` is its keys' prefix in messages."""

    name: str
    url: str
    prefix: str  # "" or "streams.<name>."
    format: str | None = None
    delimiter: str | None = None
    header: bool = True
    quote: str | None = '"'
    types: dict[str, str] = field(default_factory=dict)
    on_bad_row: str = "fail"


@dataclass(frozen=True)
class Config:
    """The source's config: its streams and the top-level-only keys."""

    streams: tuple[StreamConfig, ...]
    batch_size: int
    storage_options: dict[str, Any]
    sample_bytes: int
    sample_files: int


def parse_config(source: str, config: Mapping[str, Any]) -> Config:
    """Validate ``config`` against :data:`SPEC`, raising a ConnectorError naming the bad key."""
    props = SPEC["properties"]
    _known_keys(source, config, props, "")
    if ("url" in config) == ("streams" in config):
        hint = "set `url:` for one stream, or `streams: {name: {url: ...}}` for several"
        raise _bad(source, "url", "give exactly one of `url` and `streams`", hint)
    defaults = {k: config[k] for k in _STREAM_KEYS if k in config}
    if "url" in config:
        entries = {source: {"url": config["url"]} | defaults}
        wheres = {source: ""}
    else:
        streams = config["streams"]
        if not isinstance(streams, Mapping) or not streams:
            raise _bad(source, "streams", "streams must be a mapping of names", "e.g. {a: {url}}")
        entries, wheres = {}, {}
        for name, entry in streams.items():
            where = f"streams.{name}."
            if not isinstance(entry, Mapping):
                raise _bad(source, where[:-1], "a stream must be a mapping", "e.g. {url: x.csv}")
            _known_keys(
                source, entry, props["streams"]["additionalProperties"]["properties"], where
            )
            if "url" not in entry:
                raise _bad(source, f"{where}url", "missing config key 'url'", "add `url:`")
            entries[str(name)], wheres[str(name)] = defaults | dict(entry), where
    streams = tuple(
        _parse_stream(source, name, entry, wheres[name]) for name, entry in entries.items()
    )
    values = {k: props[k].get("default") for k in props} | dict(config)
    for key in ("batch_size", "sample_bytes", "sample_files"):
        value, low = values[key], props[key]["minimum"]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _bad(source, key, f"{key} must be an integer >= {low}, not {value!r}", f"{key}:")
    options = values["storage_options"] or {}
    if not isinstance(options, Mapping):
        raise _bad(source, "storage_options", "must be a mapping", "e.g. {anon: true}")
    return Config(
        streams, values["batch_size"], dict(options), values["sample_bytes"], values["sample_files"]
    )


def _known_keys(source: str, config: Mapping[str, Any], allowed: Mapping, where: str) -> None:
    if not isinstance(config, Mapping):
        raise _bad(source, where or "config", "the config must be a mapping", "see the docs")
    for key in config:
        if key not in allowed:
            hint = f"valid keys: {', '.join(sorted(allowed))}"
            raise _bad(source, f"{where}{key}", f"unknown config key {key!r}", hint)


def _parse_stream(source: str, name: str, entry: Mapping[str, Any], where: str) -> StreamConfig:
    def fail(key: str, message: str, hint: str) -> ConnectorError:
        return _bad(source, f"{where}{key}", message, hint)

    url = entry["url"]
    if not isinstance(url, str) or not url:
        raise fail("url", "url must be a non-empty string", "e.g. url: data/*.csv")
    fmt = entry.get("format")
    if fmt is not None and fmt not in _STREAM_KEYS["format"]["enum"]:
        raise fail("format", f"unknown format {fmt!r}", "use csv, jsonl or parquet")
    for key in ("delimiter", "quote"):
        value = entry.get(key, ",")
        if value is not None and (not isinstance(value, str) or len(value) != 1):
            raise fail(key, f"{key} must be one character, not {value!r}", f'e.g. {key}: ";"')
    if entry.get("delimiter") is not None and entry.get("delimiter") == entry.get("quote", '"'):
        raise fail("delimiter", "delimiter and quote must differ", 'e.g. quote: "\'"')
    header = entry.get("header", True)
    if not isinstance(header, bool):
        raise fail("header", f"header must be true or false, not {header!r}", "header: false")
    types = entry.get("types") or {}
    if not isinstance(types, Mapping) or any(t not in TYPES for t in types.values()):
        raise fail("types", f"types must map columns to one of {sorted(TYPES)}", "{id: int64}")
    policy = entry.get("on_bad_row", "fail")
    if policy not in ("fail", "skip"):
        raise fail("on_bad_row", f"on_bad_row must be fail or skip, not {policy!r}", "skip")
    return StreamConfig(
        name,
        url,
        where,
        fmt,
        entry.get("delimiter"),
        header,
        entry.get("quote", '"'),
        dict(types),
        policy,
    )


def _bad(source: str, key: str, message: str, hint: str) -> ConnectorError:
    return ConnectorError(message, source=source, key=key, hint=hint)
