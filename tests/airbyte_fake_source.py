"""A small Airbyte protocol source for tests: ``python airbyte_fake_source.py <verb> ...``.

Speaks the protocol as airbyte-cdk 6/7 sources write it (compact JSON lines on stdout, the
``--state`` file in list form) and uses only the standard library, so it starts fast.

Streams:

* ``items``: ``id`` (primary key and source-defined cursor), ``name``, ``price``, ``day``
  (a date), ``updated_at``, ``tags`` (array), ``meta`` (object), ``_ab_cdc_deleted_at``.
  An incremental read starts after the ``id`` of its STREAM state; records ``1..count``,
  a per-stream STATE ``{"id": n}`` every ``state_every`` records and at the end; then a
  CDC delete record for each id of ``deleted`` (and ``revived`` ids emitted again after).
* ``events``: ``seq``, ``kind``; full refresh only, no key; ``count`` records, no state.
* ``blobs``: a JSON Schema without properties (any record); two records, full refresh.

Config (the spec below): ``count`` (required), ``state_every``, ``deleted``, ``revived``,
``api_key`` (a secret), and behaviours for tests: ``fail_after`` (an ERROR trace after that
many records, ``failure_type``), ``crash_after`` (SIGKILL itself after that many records),
``exit_after`` (exit 3 after that many records, writing the api_key and a message to stderr),
``hang_after`` (sleep forever after that many records, ignoring SIGTERM), ``pid_file`` (gets
the pid of a read), ``logs`` (LOG messages ``[[level, text], ...]`` emitted first), ``stray``
(a line of plain text on stdout), ``record_to`` (append ``{"verb", "state"}`` as a JSON line:
the state file exactly as received), ``check_fails`` (check answers FAILED), ``bad_type``
(record 2's ``price`` is the text ``"n/a"``), ``wild`` (``{"schema": <JSON Schema>, "records":
"<JSON text of a list of records>"}``: a stream ``wild``, full refresh, with exactly those
records, written by ``json.dumps``: integers beyond 64 bits, NaN and Infinity as Python
writes them), ``undeclared`` (``{field: value}`` every ``items`` record carries and
``discover`` never declares), ``upstream`` (the path of a JSON file read by each command, the
source's data as it is now, which may change while the config does not: ``count`` overrides
the config's, ``columns`` ``{name: JSON Schema}`` are columns ``items`` gained, declared by
``discover`` and in every record, ``"<name> <id>"``), ``cdc_updated_at`` (a time: ``items``
declares ``_ab_cdc_updated_at``, as CDC sources do, and every record and delete carries it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

SPEC = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["count"],
    "additionalProperties": True,
    "properties": {
        "count": {"type": "integer", "minimum": 0},
        "state_every": {"type": "integer", "minimum": 1, "default": 10},
        "api_key": {"type": "string", "airbyte_secret": True},
        "deleted": {"type": "array", "items": {"type": "integer"}},
        "revived": {"type": "array", "items": {"type": "integer"}},
        "options": {
            "type": "object",
            "properties": {"mode": {"type": "string", "enum": ["fast", "slow"]}},
        },
    },
}
ITEMS = {
    "name": "items",
    "json_schema": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": ["null", "string"]},
            "price": {"type": ["null", "number"]},
            "day": {"type": ["null", "string"], "format": "date"},
            "updated_at": {
                "type": ["null", "string"],
                "format": "date-time",
                "airbyte_type": "timestamp_with_timezone",
            },
            "tags": {"type": ["null", "array"], "items": {"type": "string"}},
            "meta": {"type": ["null", "object"]},
            "_ab_cdc_deleted_at": {"type": ["null", "string"], "format": "date-time"},
        },
    },
    "supported_sync_modes": ["full_refresh", "incremental"],
    "source_defined_cursor": True,
    "default_cursor_field": ["id"],
    "source_defined_primary_key": [["id"]],
    "is_resumable": True,
}
EVENTS = {
    "name": "events",
    "json_schema": {
        "type": "object",
        "properties": {"seq": {"type": "integer"}, "kind": {"type": "string"}},
    },
    "supported_sync_modes": ["full_refresh"],
}
BLOBS = {
    "name": "blobs",
    "json_schema": {"type": "object"},
    "supported_sync_modes": ["full_refresh"],
}


def emit(kind: str, key: str, body: dict) -> None:
    sys.stdout.write(json.dumps({"type": kind, key: body}, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def record(stream: str, data: dict) -> None:
    emit("RECORD", "record", {"stream": stream, "data": data, "emitted_at": 1795314542415})


def state(stream: str, stream_state: dict, count: int) -> None:
    body = {
        "type": "STREAM",
        "stream": {"stream_descriptor": {"name": stream}, "stream_state": stream_state},
        "sourceStats": {"recordCount": float(count)},
    }
    emit("STATE", "state", body)


def options(argv: list[str]) -> dict[str, str]:
    return {argv[i][2:]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}


def item(i: int, config: dict, deleted: bool = False) -> dict:
    data = {
        "id": i,
        "name": f"item {i}",
        "price": i * 1.5,
        "day": f"2026-01-{(i % 28) + 1:02d}",
        "updated_at": f"2026-01-01T00:00:{i % 60:02d}+00:00",
        "tags": ["a", f"t{i}"],
        "meta": {"n": i, "even": i % 2 == 0},
    }
    data |= config.get("undeclared", {})
    data |= {name: f"{name} {i}" for name in config.get("columns", {})}
    if config.get("bad_type") and i == 2:
        data |= {"price": "n/a"}
    if deleted:
        data = {"id": i, "_ab_cdc_deleted_at": "2026-02-01T00:00:00Z"}
    if "cdc_updated_at" in config:
        data["_ab_cdc_updated_at"] = config["cdc_updated_at"]
    return data


def behave(config: dict, emitted: int) -> None:
    """The test behaviours that trigger after ``emitted`` records."""
    if config.get("fail_after") == emitted:
        error = {
            "message": "the API refused the request",
            "internal_message": "HTTP 503 from upstream",
            "failure_type": config.get("failure_type", "system_error"),
        }
        emit("TRACE", "trace", {"type": "ERROR", "emitted_at": 1795314542415.0, "error": error})
        sys.exit(1)
    if config.get("crash_after") == emitted:
        os.kill(os.getpid(), signal.SIGKILL)
    if config.get("exit_after") == emitted:
        sys.stderr.write(f"Traceback: login with key {config.get('api_key')} failed\n")
        sys.stderr.write("RuntimeError: upstream went away\n")
        sys.exit(3)
    if config.get("hang_after") == emitted:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL stops it
        while True:
            time.sleep(1)


def read(config: dict, catalog: dict, saved: list) -> None:
    if config.get("pid_file"):
        with open(config["pid_file"], "w") as handle:
            handle.write(str(os.getpid()))
    for configured in catalog["streams"]:
        name = configured["stream"]["name"]
        if name == "wild":
            for data in json.loads(config["wild"]["records"]):
                sys.stdout.write(
                    json.dumps(
                        {
                            "type": "RECORD",
                            "record": {"stream": "wild", "data": data, "emitted_at": 1},
                        }
                    )
                    + "\n"
                )
            continue
        if name == "blobs":
            for i in range(1, 3):
                record("blobs", {"k": i, "v": {"x": [i]}})
            continue
        if name == "events":
            for i in range(1, config["count"] + 1):
                record("events", {"seq": i, "kind": "click" if i % 2 else "view"})
            continue
        start = 0
        if configured["sync_mode"] == "incremental":
            for message in saved:
                if message.get("type") == "STREAM":
                    start = message["stream"]["stream_state"].get("id", 0)
        every, last = config.get("state_every", 10), start
        for i in range(start + 1, config["count"] + 1):
            behave(config, i - start - 1)
            record("items", item(i, config))
            last = i
            if (i - start) % every == 0:
                state("items", {"id": i}, every)
        behave(config, last - start)
        for i in config.get("deleted", []):
            record("items", item(i, config, deleted=True))
        for i in config.get("revived", []):
            record("items", item(i, config))
        state("items", {"id": last}, 0)


def load(path: str):
    with open(path) as handle:
        return json.load(handle)


def main(argv: list[str]) -> int:
    verb, opts = argv[1], options(argv)
    config = load(opts["config"]) if "config" in opts else {}
    if config.get("upstream") and os.path.exists(config["upstream"]):
        config |= load(config["upstream"])
    saved = load(opts["state"]) if "state" in opts else []
    if config.get("record_to"):
        with open(config["record_to"], "a") as handle:
            handle.write(json.dumps({"verb": verb, "state": saved if "state" in opts else None}))
            handle.write("\n")
    for level, text in config.get("logs", []):
        emit("LOG", "log", {"level": level, "message": text})
    if config.get("stray"):
        sys.stdout.write(config["stray"] + "\n")
    if verb == "spec":
        emit("SPEC", "spec", {"connectionSpecification": SPEC, "documentationUrl": "x"})
    elif verb == "check":
        ok = not config.get("check_fails")
        status = {"status": "SUCCEEDED"} if ok else {"status": "FAILED", "message": "bad key"}
        emit("CONNECTION_STATUS", "connectionStatus", status)
    elif verb == "discover":
        items = json.loads(json.dumps(ITEMS))
        items["json_schema"]["properties"] |= config.get("columns", {})
        if "cdc_updated_at" in config:
            stamp = {"type": ["null", "string"], "format": "date-time"}
            items["json_schema"]["properties"]["_ab_cdc_updated_at"] = stamp
        streams = [items, EVENTS, BLOBS]
        if config.get("wild"):
            schema = config["wild"]["schema"]
            streams.append(
                {"name": "wild", "json_schema": schema, "supported_sync_modes": ["full_refresh"]}
            )
        emit("CATALOG", "catalog", {"streams": streams})
    elif verb == "read":
        read(config, load(opts["catalog"]), saved)
    return 0


def entry() -> None:
    """The console script of the fake when installed as a package (tests build a wheel)."""
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    entry()
