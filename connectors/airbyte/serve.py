"""``mdstack-source``: any registered mdstack source as an Airbyte protocol connector.

Airbyte (Cloud, OSS, PyAirbyte) runs a source as a program with four commands and reads
one JSON AirbyteMessage per line from its stdout. This module is that program for every
source in :data:`connectors.REGISTRY`, so the same connector serves mdstack pipelines and
Airbyte connections alike::

    mdstack-source postgres spec
    mdstack-source postgres check    --config config.json
    mdstack-source postgres discover --config config.json
    mdstack-source postgres read     --config config.json --catalog catalog.json --state state.json

How the protocol maps onto :mod:`connectors.base`:

* ``Checkpoint`` -> a per-stream STATE whose ``stream_state`` is the checkpoint's state; a
  ``--state`` file holding those STATE messages (Airbyte's list form) resumes each stream;
* ``Batch`` -> RECORD lines (see :mod:`connectors.airbyte.messages`); ``Deletes`` ->
  RECORDs with the key columns and ``_ab_cdc_deleted_at`` set, as Airbyte's CDC sources do;
* a configured stream's ``sync_mode`` + ``destination_sync_mode`` pick the source's mode
  (``incremental`` + ``append_dedup`` -> ``incremental_deduped``, ...).

Exit code 0 on success (a failed ``check`` is a message, not an error), 1 after an ERROR
TRACE. Logs of the ``connectors`` loggers become LOG messages; stdout carries nothing else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from connectors import REGISTRY, load_source
from connectors.airbyte import messages as msg
from connectors.base import (
    Batch,
    Catalog,
    Checkpoint,
    ConfiguredStream,
    Deletes,
    SharedRead,
    Source,
    State,
    SyncMode,
)
from connectors.errors import ConnectorError, MdstackError

DOCS_URL = "https://github.com/mdstack/mdstack#serving-sources-to-airbyte"

_MODES: dict[tuple[str, str], SyncMode] = {
    ("full_refresh", "overwrite"): "full_refresh_overwrite",
    ("full_refresh", "append"): "full_refresh_append",
    ("incremental", "append"): "incremental_append",
    ("incremental", "append_dedup"): "incremental_deduped",
}
_LEVELS = {"CRITICAL": "FATAL", "WARNING": "WARN"}


def main(argv: list[str] | None = None, out: BinaryIO | None = None) -> int:
    """Run one protocol command; returns the process exit code."""
    args = _parser().parse_args(argv)
    out = out or sys.stdout.buffer
    handler = _LogHandler(out)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    try:
        _run(args, out)
        return 0
    except _Reported:
        return 1
    except Exception as exc:
        out.write(_error(exc))
        return 1
    finally:
        logging.getLogger().removeHandler(handler)
        out.flush()


def _run(args: argparse.Namespace, out: BinaryIO) -> None:
    if args.command == "spec":
        out.write(msg.spec_message(_source(args.name, {}).spec(), DOCS_URL))
        return
    source = _source(args.name, _json_file(args.config, "--config"))
    if args.command == "check":
        try:
            result = source.check()
            ok, text = result.ok, result.message
        except MdstackError as exc:
            ok, text = False, str(exc)
        out.write(msg.status_message(ok, text))
    elif args.command == "discover":
        out.write(msg.catalog_message(source.discover()))
    else:
        catalog = source.discover()
        configured = _json_file(args.catalog, "--catalog")
        states = _stream_states(_json_file(args.state, "--state") if args.state else None)
        streams = [_configured(catalog, entry) for entry in configured.get("streams", [])]
        held = [state for state in states.values() if state]
        for stream in streams:
            _read_stream(source, stream, states.get(stream.name), held, out)


def _read_stream(
    source: Source, stream: ConfiguredStream, state: State | None, held: list[State], out: BinaryIO
):
    """Emit one stream's records and states between STARTED and COMPLETE traces.

    A stream whose source shares one change log among streams (PostgreSQL CDC's one slot
    per source) is read through it with every state of the ``--state`` file holding the
    log: it is released only as far as every stream has got.
    """
    out.write(msg.status_trace(stream.name, "STARTED"))
    records, running = 0, False
    if isinstance(source, SharedRead) and source.shares_read(stream):
        messages = source.read_group([stream], {stream.name: state}, lambda: held)
    else:
        messages = source.read(stream, state)
    try:
        for message in messages:
            if not running:
                out.write(msg.status_trace(stream.name, "RUNNING"))
                running = True
            if isinstance(message, Batch):
                out.write(msg.record_lines(stream.name, message.data, msg.now_ms()))
                records += message.data.num_rows
            elif isinstance(message, Deletes):
                out.write(msg.delete_lines(stream.name, message.keys, msg.now_ms()))
                records += message.keys.num_rows
            elif isinstance(message, Checkpoint):
                out.write(msg.state_message(stream.name, message.state, records))
                out.flush()
                records = 0
    except Exception as exc:
        out.write(msg.status_trace(stream.name, "INCOMPLETE"))
        out.write(_error(exc, stream.name))
        raise _Reported from exc
    out.write(msg.status_trace(stream.name, "COMPLETE"))


def _source(name: str, config: Mapping[str, Any]) -> Source:
    return load_source(name, name, config)


def _configured(catalog: Catalog, entry: Mapping[str, Any]) -> ConfiguredStream:
    """A ConfiguredAirbyteStream as the source's ConfiguredStream."""
    name = entry.get("stream", {}).get("name")
    if name not in catalog.names:
        raise ConnectorError(
            f"the configured catalog asks for stream {name!r}, which the source does not offer",
            stream=name,
            key="--catalog",
            hint=f"streams offered: {', '.join(catalog.names)}; run `discover`",
        )
    spec = catalog.stream(name)
    if spec.loaded_externally:
        raise ConnectorError(
            f"stream {name!r} is loaded into the warehouse by another system: it has no "
            "records to serve",
            stream=name,
            key="--catalog",
            hint="serve a source that reads its own records",
        )
    sync = entry.get("sync_mode", "full_refresh")
    wanted = _MODES.get((sync, entry.get("destination_sync_mode", "append")))
    family = [m for m in spec.sync_modes if m.startswith(sync)]
    if not family:
        raise ConnectorError(
            f"sync_mode {sync!r} is not supported by this stream",
            stream=spec.name,
            key="sync_mode",
            hint=f"the stream supports {', '.join(spec.sync_modes)}",
        )
    cursor_field = entry.get("cursor_field") or []
    if len(cursor_field) > 1:
        raise ConnectorError(
            f"nested cursor_field {cursor_field} is not supported",
            stream=spec.name,
            key="cursor_field",
            hint="choose a top-level column as the cursor",
        )
    keys = tuple(path[0] for path in entry.get("primary_key") or []) or spec.primary_key
    return ConfiguredStream(
        spec,
        wanted if wanted in family else family[0],
        cursor_field[0] if cursor_field else spec.cursor,
        keys,
    )


def _stream_states(raw: Any) -> dict[str, State]:
    """Per-stream states from a ``--state`` file: a list of STREAM state messages."""
    if not raw:
        return {}
    items = raw if isinstance(raw, list) else [raw]
    states: dict[str, State] = {}
    for item in items:
        if not isinstance(item, dict) or item.get("type", "STREAM") != "STREAM":
            raise ConnectorError(
                f"unsupported state message {str(item)[:80]!r}",
                key="--state",
                hint="pass the per-stream STATE messages this connector emitted "
                '([{"type": "STREAM", "stream": {...}}])',
            )
        stream = item.get("stream") or {}
        name = (stream.get("stream_descriptor") or {}).get("name")
        if name and stream.get("stream_state") is not None:
            states[name] = stream["stream_state"]
    return states


def _json_file(path: str, option: str) -> Any:
    try:
        return orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConnectorError(
            f"cannot read {path}: {exc}", key=option, hint=f"pass a JSON file as {option}"
        ) from exc


class _Reported(Exception):
    """A failure whose ERROR trace is already on the protocol stream."""


def _error(exc: Exception, stream: str | None = None) -> bytes:
    """The ERROR trace for ``exc``: config errors are the user's to fix, others are ours."""
    if isinstance(exc, MdstackError):
        failure = "transient_error" if exc.retryable else "config_error" if exc.key else None
        return msg.error_trace(
            exc.message, str(exc), failure or "system_error", exc.stream or stream
        )
    return msg.error_trace(
        "the source failed; see internal_message",
        f"{type(exc).__name__}: {exc}",
        "system_error",
        stream,
    )


class _LogHandler(logging.Handler):
    """Python log records as LOG messages on the protocol stream."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        level = _LEVELS.get(record.levelname, record.levelname)
        self.out.write(msg.log_message(level, self.format(record)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdstack-source",
        description="Run an mdstack source as an Airbyte protocol connector: one JSON "
        "AirbyteMessage per line on stdout (SPEC, CONNECTION_STATUS, CATALOG, RECORD, STATE, "
        "LOG, TRACE). Exit code 0 on success, 1 after an ERROR trace.",
        epilog="example: mdstack-source postgres read --config c.json --catalog cat.json "
        "--state state.json (state: the STATE messages of the previous read, as a JSON list)",
    )
    parser.add_argument("name", choices=sorted(REGISTRY), help="the mdstack source to serve")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("spec", help="print the config's JSON Schema (SPEC)")
    for command, text in (
        ("check", "test the config (CONNECTION_STATUS)"),
        ("discover", "list the streams with their JSON Schemas, keys and cursors (CATALOG)"),
        ("read", "read the configured streams (RECORD and STATE)"),
    ):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("--config", required=True, help="JSON file with the source's config")
        if command == "read":
            sub.add_argument("--catalog", required=True, help="configured catalog (JSON)")
            sub.add_argument("--state", help="per-stream STATE messages of the last read (JSON)")
    return parser


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
