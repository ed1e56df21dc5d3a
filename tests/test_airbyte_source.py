"""The airbyte source: Airbyte protocol connectors run as processes, into the warehouse.

Most tests drive ``tests/airbyte_fake_source.py`` (a standard-library protocol source, fast
to start) through the engine; the last one installs the real ``airbyte-source-faker`` from
PyPI (once: cached in the default connectors folder) and syncs it twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from connectors import load_source
from connectors.airbyte import install, process
from connectors.airbyte import read as airbyte_read
from connectors.airbyte.process import Scrubber
from connectors.airbyte.read import States, read_messages
from connectors.airbyte.records import Records
from connectors.base import Batch, Checkpoint, ConfiguredStream
from connectors.errors import ConnectorError, SourceUnavailable
from stack.cli import app
from stack.config import StackConfig
from stack.load import EVERY_CHECKPOINT, RunContext, ledger, plan_stream, sync_stream
from stack.run.scope import sync_source

FAKE = Path(__file__).resolve().parent / "airbyte_fake_source.py"
CONNECTORS_DIR = Path(
    os.environ.get(install.CACHE_ENV) or Path.home() / ".cache/mdstack/connectors"
)
"""The default connectors folder of the user running the tests (read at import, before the
run-wide fixture points HOME elsewhere), so the faker install is reused between runs."""
UV_CACHE = Path.home() / ".cache" / "uv"
FAKER_VERSION = "7.2.1"


def fake(**config: Any) -> dict[str, Any]:
    return {"executable": [sys.executable, str(FAKE)], "config": config}


def stack_config(tmp_path: Path, source: dict[str, Any], streams: dict[str, Any]) -> StackConfig:
    return StackConfig.model_validate(
        {
            "name": "p",
            "target": "local",
            "targets": {"local": {"type": "duckdb"}},
            "sources": {
                "src": {
                    "connector": "airbyte",
                    "config": source,
                    "schema": "raw",
                    "streams": streams,
                }
            },
            "path": tmp_path / "stack.yml",
        }
    )


def sync(wh, tmp_path: Path, source: dict[str, Any], streams: dict[str, Any], run_id: str):
    cfg = stack_config(tmp_path, source, streams)
    return sync_source(wh, cfg, "src", RunContext("p", "default", run_id))


def rows(wh, table: str = "items", columns: str = "id") -> list[tuple]:
    result = wh.query(f"SELECT {columns} FROM raw.{table} ORDER BY ALL")
    return [tuple(r.values()) for r in result.to_pylist()]


def stored(wh, stream: str = "items") -> dict | None:
    return ledger.read_state(wh, ledger.StreamKey("p", "src", stream, "default"))


def received(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def items_state(last: int) -> dict:
    descriptor = {"stream_descriptor": {"name": "items"}, "stream_state": {"id": last}}
    return {"airbyte_state": [{"type": "STREAM", "stream": descriptor}]}


def read_stream(source, mode: str = "incremental_deduped", state=None):
    spec = source.discover().stream("items")
    return source.read(ConfiguredStream(spec, mode, "id", ("id",)), state)


def read_items(source, mode: str = "incremental_deduped", state=None) -> list:
    return list(read_stream(source, mode, state))


# -- discover ---------------------------------------------------------------------------------
def test_discover_types_columns_from_the_json_schema_with_keys_cursors_and_modes() -> None:
    catalog = load_source("airbyte", "src", fake(count=1)).discover()
    items, events = catalog.stream("items"), catalog.stream("events")
    assert dict(zip(items.schema.names, items.schema.types, strict=True)) == {
        "id": pa.int64(),
        "name": pa.string(),
        "price": pa.float64(),
        "day": pa.date32(),
        "updated_at": pa.timestamp("us", "UTC"),
        "tags": pa.string(),
        "meta": pa.string(),
        "_ab_cdc_deleted_at": pa.timestamp("us", "UTC"),
    }
    assert (items.primary_key, items.cursor, items.emits_deletes) == (("id",), "id", True)
    assert "incremental_deduped" in items.sync_modes
    assert events.sync_modes == ("full_refresh_overwrite", "full_refresh_append")
    assert (events.primary_key, events.cursor, events.emits_deletes) == ((), None, False)


def test_a_stream_without_declared_properties_is_one_json_column_of_whole_records() -> None:
    source = load_source("airbyte", "src", fake(count=1))
    blobs = source.discover().stream("blobs")
    assert blobs.schema == pa.schema([("_airbyte_data", pa.string())])
    messages = source.read(ConfiguredStream(blobs, "full_refresh_append"), None)
    batch = next(m for m in messages if isinstance(m, Batch))
    assert batch.data.column(0).to_pylist() == ['{"k":1,"v":{"x":[1]}}', '{"k":2,"v":{"x":[2]}}']


# -- read: state, checkpoints, resume ---------------------------------------------------------
def shape(messages: list) -> list:
    return [
        m.data.column("id").to_pylist() if isinstance(m, Batch) else m.state["airbyte_state"]
        for m in messages
    ]


def at(last: int) -> list:
    return items_state(last)["airbyte_state"]


def test_each_state_message_commits_exactly_the_records_before_it() -> None:
    source = load_source("airbyte", "src", fake(count=12, state_every=5) | {"batch_size": 5})
    messages = read_items(source)
    assert shape(messages) == [
        [1, 2, 3, 4, 5],
        at(5),
        [6, 7, 8, 9, 10],
        at(10),
        [11, 12],
        at(12),
        at(12),  # the end of the read repeats the last state
    ]
    first = messages[0].data.slice(0, 1).to_pylist()[0]
    assert first["meta"] == '{"n":1,"even":false}' and first["tags"] == '["a","t1"]'
    assert str(first["day"]) == "2026-01-02" and first["updated_at"].second == 1


def test_frequent_states_wait_for_a_full_block_which_is_cut_at_the_last_state() -> None:
    source = load_source("airbyte", "src", fake(count=12, state_every=5) | {"batch_size": 8})
    # 1-8 fill the block: cut after state 5; states 10 and 12 wait until the end
    assert shape(read_items(source)) == [
        [1, 2, 3, 4, 5],
        at(5),
        [6, 7, 8, 9, 10, 11, 12],
        at(12),
        at(12),
    ]


def test_records_after_a_waiting_last_state_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(airbyte_read, "CHECKPOINT_SECONDS", 3600.0)  # every STATE waits

    def record(i: int) -> bytes:
        data = {"stream": "items", "emitted_at": 0, "data": {"id": i}}
        return json.dumps({"type": "RECORD", "record": data}, separators=(",", ":")).encode()

    state = json.dumps({"type": "STATE", "state": at(3)[0]}).encode()
    # the STATE waits for more records; the connector then exits without another STATE
    lines = [record(1), record(2), record(3), state, record(4), record(5)]
    schema = {"type": "object", "properties": {"id": {"type": "integer"}}}
    messages = read_messages(
        lines,
        Records("src", "items", schema),
        States("src", "items", None),
        keys=(),
        deletes=False,
        batch_size=1000,
        scrub=Scrubber(),
    )
    assert shape(messages) == [[1, 2, 3], at(3), [4, 5], at(3)]


def test_incremental_sync_stores_replayable_state_and_resumes_from_it(
    warehouse, tmp_path: Path
) -> None:
    log = tmp_path / "received.jsonl"
    streams = {
        "items": {"sync": "incremental_deduped"},
        "events": {"sync": "full_refresh_overwrite"},
    }
    sync(warehouse, tmp_path, fake(count=25, state_every=10, record_to=str(log)), streams, "r1")
    assert stored(warehouse) == items_state(25)
    assert rows(warehouse) == [(i,) for i in range(1, 26)]
    assert len(rows(warehouse, "events", "seq")) == 25
    sync(warehouse, tmp_path, fake(count=30, state_every=10, record_to=str(log)), streams, "r2")
    reads = [r for r in received(log) if r["verb"] == "read"]
    # first read of each stream: no --state; then exactly what run 1 stored for items;
    # full refresh streams never get a state
    assert [r["state"] for r in reads] == [None, None, items_state(25)["airbyte_state"], None]
    assert rows(warehouse, columns="id, _mds_run_id") == [
        *((i, "r1") for i in range(1, 26)),
        *((i, "r2") for i in range(26, 31)),
    ]
    assert stored(warehouse) == items_state(30)


def test_a_connector_killed_after_a_state_resumes_from_the_committed_state(
    warehouse, tmp_path: Path
) -> None:
    log = tmp_path / "received.jsonl"
    config = {"count": 30, "state_every": 5, "record_to": str(log)}
    cfg = stack_config(tmp_path, fake(**config, crash_after=17) | {"batch_size": 5}, {"items": {}})
    source = load_source("airbyte", "src", cfg.sources["src"].config)
    plan = plan_stream("src", cfg.sources["src"], source.discover(), "items")
    with pytest.raises(ConnectorError, match="exited with code -9"):
        sync_stream(
            warehouse, source, plan, RunContext("p", "default", "r1"), None, EVERY_CHECKPOINT
        )
    assert stored(warehouse) == items_state(15)
    assert rows(warehouse) == [(i,) for i in range(1, 16)]  # 16 and 17 were never committed
    source = load_source("airbyte", "src", fake(**config) | {"batch_size": 5})
    sync_stream(warehouse, source, plan, RunContext("p", "default", "r2"), None, EVERY_CHECKPOINT)
    assert received(log)[-1]["state"] == items_state(15)["airbyte_state"]
    assert rows(warehouse) == [(i,) for i in range(1, 31)]
    assert stored(warehouse) == items_state(30)


def test_a_stored_state_that_is_not_airbyte_state_is_refused_with_a_reset_hint() -> None:
    source = load_source("airbyte", "src", fake(count=3))
    with pytest.raises(ConnectorError, match="reset the stream's state"):
        read_items(source, state={"airbyte_state": {"id": 3}})


# -- deletes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("deletes", ["hard", "soft"])
def test_cdc_deleted_records_become_deletes_in_stream_order(
    warehouse, tmp_path: Path, deletes: str
) -> None:
    source = fake(count=6, state_every=100, deleted=[2, 4, 5], revived=[4])
    messages = read_items(load_source("airbyte", "src", source))
    kinds = [
        (type(m).__name__, m.data.num_rows if isinstance(m, Batch) else None) for m in messages
    ]
    assert kinds[:4] == [("Batch", 6), ("Deletes", None), ("Batch", 1), ("Checkpoint", None)]
    gone = messages[1].keys.to_pydict()
    assert gone["id"] == [2, 4, 5] and str(gone["_deleted_at"][0]) == "2026-02-01 00:00:00"
    streams = {"items": {"sync": "incremental_deduped", "deletes": deletes}}
    sync(warehouse, tmp_path, source, streams, "r1")
    if deletes == "hard":
        assert rows(warehouse) == [(1,), (3,), (4,), (6,)]
    else:
        marked = rows(warehouse, columns="id, _mds_deleted_at IS NOT NULL")
        assert marked == [(1, False), (2, True), (3, False), (4, False), (5, True), (6, False)]


def test_cdc_change_times_start_the_versions_of_a_history_stream(warehouse, tmp_path: Path):
    """``_ab_cdc_updated_at`` is when each record changed: a history stream's versions start
    then, not when they were loaded; every change of a key is a version."""
    changed = "2026-03-01T10:00:00Z"
    source = fake(
        count=3,
        state_every=100,
        deleted=[2],
        revived=[2],
        cdc_updated_at=changed,
    )
    streams = {"items": {"sync": "incremental_deduped_history", "deletes": "hard"}}
    sync(warehouse, tmp_path, source, streams, "r1")
    versions = rows(warehouse, columns="id, _mds_valid_from, _mds_is_current")
    start = datetime(2026, 3, 1, 10, 0)
    assert sorted(versions, key=lambda v: (v[0], v[2])) == [
        (1, start, True),
        (2, start, False),
        (2, start, True),
        (3, start, True),
    ]
    assert rows(warehouse, table="items_current") == [(1,), (2,), (3,)]


# -- errors, logs, types ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failure", "retryable"), [("transient_error", True), ("system_error", False)]
)
def test_an_error_trace_raises_its_message_after_the_committed_checkpoints(
    failure: str, retryable: bool
) -> None:
    config = fake(count=30, state_every=5, fail_after=12, failure_type=failure)
    source = load_source("airbyte", "src", config | {"batch_size": 5})
    spec = source.discover().stream("items")
    got = []
    with pytest.raises(ConnectorError) as err:
        for message in source.read(ConfiguredStream(spec, "incremental_append", "id"), None):
            got.append(message)
    assert "the API refused the request" in str(err.value) and "HTTP 503" in str(err.value)
    assert err.value.retryable is retryable and err.value.stream == "items"
    assert [m.state for m in got if isinstance(m, Checkpoint)] == [items_state(5), items_state(10)]
    assert got[-1] == Checkpoint("items", items_state(10))  # records 11, 12 are not yielded


def test_a_non_zero_exit_shows_the_stderr_tail_with_secrets_masked() -> None:
    source = load_source("airbyte", "src", fake(count=9, exit_after=4, api_key="sk-live-9f8e7d"))
    with pytest.raises(ConnectorError, match="exited with code 3") as err:
        read_items(source)
    assert "upstream went away" in str(err.value)
    assert "sk-live-9f8e7d" not in str(err.value) and "login with key ***" in str(err.value)


def test_log_messages_go_to_logging_at_their_level(caplog: pytest.LogCaptureFixture) -> None:
    logs = [["WARN", "quota at 90%"], ["ERROR", "retrying page 3"], ["DEBUG", "GET /items"]]
    source = load_source("airbyte", "src", fake(count=2, logs=logs, stray="not json"))
    with caplog.at_level(logging.DEBUG, logger="connectors.airbyte"):
        read_items(source)
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "connectors.airbyte"]
    assert (logging.WARNING, "src: quota at 90%") in said
    assert (logging.ERROR, "src: retrying page 3") in said
    assert (logging.DEBUG, "src: GET /items") in said
    assert (logging.INFO, "src: not json") in said


def test_values_that_do_not_fit_their_declared_type_are_read_as_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = load_source("airbyte", "src", fake(count=3, bad_type=True))
    batch = next(m for m in read_items(source) if isinstance(m, Batch)).data
    assert batch.schema.field("price").type == pa.string()
    assert batch.column("price").to_pylist() == ["1.5", "n/a", "4.5"]
    assert batch.schema.field("day").type == pa.date32()  # the other columns keep their types
    assert "values of 'price' do not fit its declared type double" in caplog.text


# -- the process: files, cancellation ---------------------------------------------------------
def test_the_config_file_is_private_and_deleted_after_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    seen: list[int] = []
    real_run = process.run

    def spy(connector, verb, files, scrub):
        seen.extend(os.stat(p).st_mode & 0o777 for p in (files["config"], files["config"].parent))
        yield from real_run(connector, verb, files, scrub)

    monkeypatch.setattr("connectors.airbyte.source.run", spy)
    read_items(load_source("airbyte", "src", fake(count=2)))
    assert seen == [0o600, 0o700]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_config_files_of_a_killed_process_are_deleted_at_the_next_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    killed = (  # SIGKILL inside the context: no finally, no atexit
        "import os, signal, sys, tempfile\n"
        f"tempfile.tempdir = {str(temp)!r}\n"
        "from connectors.airbyte.process import private_files\n"
        "with private_files(config={'api_key': 'sk-live-1'}) as files:\n"
        "    print(files['config'].parent, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    repo = Path(__file__).parents[1]
    done = subprocess.run([sys.executable, "-c", killed], capture_output=True, text=True, cwd=repo)
    assert done.returncode == -signal.SIGKILL
    orphan = Path(done.stdout.strip())
    assert (orphan / "config.json").exists()  # what a killed process leaves behind
    live = Path(tempfile.mkdtemp(prefix=f"mdstack-airbyte-{os.getpid()}-"))  # a running peer
    read_items(load_source("airbyte", "src", fake(count=2)))
    assert not orphan.exists()
    assert live.exists()
    assert list(temp.iterdir()) == [live]  # and the read's own folder is gone too


@pytest.mark.parametrize("how", ["close", "interrupt"])
def test_a_cancelled_read_leaves_no_connector_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(process, "GRACE_SECONDS", 0.3)
    pid_file = tmp_path / "pid"
    config = fake(count=100, state_every=5, hang_after=7, pid_file=str(pid_file))
    config["batch_size"] = 5
    source = load_source("airbyte", "src", config)
    spec = source.discover().stream("items")
    reading = source.read(ConfiguredStream(spec, "incremental_append", "id"), None)
    assert isinstance(next(reading), Batch)
    assert isinstance(next(reading), Checkpoint)
    for _ in range(100):  # the connector has sent 7 records and now ignores SIGTERM
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    if how == "close":
        reading.close()
    else:
        with pytest.raises(KeyboardInterrupt):
            reading.throw(KeyboardInterrupt)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_connector_writes_ahead_while_mdstack_is_busy(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    config = fake(count=3000, state_every=1000, pid_file=str(pid_file)) | {"batch_size": 100}
    reading = read_stream(load_source("airbyte", "src", config))
    first = next(reading)  # then mdstack is busy: ~1 MB of records is more than a pipe holds
    pid = int(pid_file.read_text())
    for _ in range(200):
        if not alive(pid):
            break
        time.sleep(0.05)
    assert not alive(pid), "the connector waited for mdstack to read its output"
    rows = sum(m.data.num_rows for m in [first, *reading] if isinstance(m, Batch))
    assert rows == 3000


def test_a_read_abandoned_in_a_thread_is_stopped_when_mdstack_exits(tmp_path: Path) -> None:
    pid_file, scratch = tmp_path / "pid", tmp_path / "tmp"
    scratch.mkdir()
    config = fake(count=100, hang_after=3, pid_file=str(pid_file)) | {"batch_size": 2}
    script = f"""
import sys, threading, time
sys.path.insert(0, {str(FAKE.parent.parent)!r})
from connectors import load_source
from connectors.base import ConfiguredStream
source = load_source("airbyte", "src", {config!r})
spec = source.discover().stream("items")
reading = source.read(ConfiguredStream(spec, "incremental_append", "id"), None)
threading.Thread(target=lambda: list(reading), daemon=True).start()
while not ({str(pid_file)!r} and open({str(pid_file)!r}, "a+").tell()):
    time.sleep(0.05)
"""  # the main thread returns while the reading thread waits on the silent connector
    env = {**os.environ, "TMPDIR": str(scratch)}
    subprocess.run([sys.executable, "-c", script], timeout=60, check=True, env=env)
    assert list(scratch.iterdir()) == []  # the config file went too
    pid = int(pid_file.read_text())
    for _ in range(40):
        if not alive(pid):
            break
        time.sleep(0.05)
    assert not alive(pid)


# -- bad config -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "key", "text"),
    [
        (fake(count="ten"), "config.count", "'ten' is not of type 'integer'"),
        (fake(state_every=3), "config.count", "'count' is a required property"),
        (fake(count=1, options={"mode": "turbo"}), "config.options.mode", "is not one of"),
        (fake(count=1) | {"package": "airbyte-source-faker"}, "package", "exactly one of"),
        ({"executable": "/nonexistent/source-x", "config": {}}, "executable", "cannot start"),
        ({"image": "airbyte/source-faker:6.2.1"}, "image", "Docker"),
        (fake(count=1) | {"bogus": 1}, "bogus", "unknown config key"),
    ],
)
def test_a_bad_config_is_refused_naming_the_key(config: dict, key: str, text: str) -> None:
    source = load_source("airbyte", "src", config)
    result = source.check()
    assert not result.ok and f"key {key!r}" in result.message and text in result.message
    with pytest.raises(ConnectorError) as err:
        source.discover()
    assert err.value.key == key


def test_a_failed_connection_check_is_reported() -> None:
    result = load_source("airbyte", "src", fake(count=1, check_fails=True)).check()
    assert (result.ok, result.message) == (False, "bad key")
    assert load_source("airbyte", "src", fake(count=1)).check().ok


# -- installs ---------------------------------------------------------------------------------
def tiny_wheel(folder: Path) -> None:
    """A wheel of the fake as the package airbyte-source-tiny 0.1.0 (console script
    ``source-tiny``), written into ``folder`` for an offline install."""
    info = "airbyte_source_tiny-0.1.0.dist-info"
    files = {
        "airbyte_fake_source.py": FAKE.read_bytes(),
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: airbyte-source-tiny\nVersion: 0.1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        f"{info}/entry_points.txt": b"[console_scripts]\nsource-tiny = airbyte_fake_source:entry\n",
    }
    record = [
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip('=')},"
        f"{len(data)}"
        for name, data in files.items()
    ]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(folder / "airbyte_source_tiny-0.1.0-py3-none-any.whl", "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)


def test_package_install_is_cached_per_version_and_rebuilt_when_unfinished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "wheels").mkdir()
    tiny_wheel(tmp_path / "wheels")
    monkeypatch.setenv("UV_FIND_LINKS", str(tmp_path / "wheels"))
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv(install.CACHE_ENV, str(tmp_path / "connectors"))
    source = load_source("airbyte", "src", {"package": "source-tiny", "config": {"count": 3}})
    assert source.check().ok  # installed on first use (the index's latest: 0.1.0)
    assert "installing airbyte-source-tiny==0.1.0" in caplog.text
    folder = tmp_path / "connectors" / "airbyte-source-tiny-0.1.0"
    marker = folder / install.MARKER
    assert json.loads(marker.read_text())["spec"]["required"] == ["count"]
    before = marker.stat().st_mtime_ns
    again = install.ensure_installed("airbyte-source-tiny", "0.1.0")
    assert again.executable == folder / "bin" / "source-tiny"
    assert marker.stat().st_mtime_ns == before  # nothing reinstalled
    marker.unlink()  # as if the install had been killed before it finished
    (folder / "leftover").write_text("x")
    assert install.ensure_installed("airbyte-source-tiny", "0.1.0").spec is not None
    assert marker.exists() and not (folder / "leftover").exists()
    listed = CliRunner().invoke(app, ["connector", "list"])
    assert listed.exit_code == 0 and "airbyte-source-tiny" in listed.output
    assert "0.1.0" in listed.output
    missing = CliRunner().invoke(app, ["connector", "install", "source-tiny", "--version", "9.9"])
    assert missing.exit_code == 1 and "installing airbyte-source-tiny failed" in missing.output


def test_an_install_that_hangs_is_stopped_with_an_error_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(install.CACHE_ENV, str(tmp_path / "connectors"))
    monkeypatch.setenv(install.TIMEOUT_ENV, "soon")
    with pytest.raises(ConnectorError, match="MDSTACK_INSTALL_TIMEOUT is 'soon'"):
        install.ensure_installed("airbyte-source-tiny", "0.1.0")
    monkeypatch.setenv(install.TIMEOUT_ENV, "2")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, never answers
        index = f"http://127.0.0.1:{silent.getsockname()[1]}/simple"
        monkeypatch.setenv("UV_INDEX_URL", index)
        monkeypatch.setenv("PIP_INDEX_URL", index)
        with pytest.raises(SourceUnavailable) as err:
            install.ensure_installed("airbyte-source-tiny", "0.1.0")
    message = str(err.value)
    assert "installing airbyte-source-tiny: `" in message and "within 2 s" in message
    assert "MDSTACK_INSTALL_TIMEOUT" in message and err.value.retryable
    folder = tmp_path / "connectors" / "airbyte-source-tiny-0.1.0"
    assert not (folder / install.MARKER).exists()  # rebuilt at the next use


# -- the real thing: airbyte-source-faker from PyPI -------------------------------------------
@pytest.fixture(scope="module")
def faker_installed() -> Path:
    """airbyte-source-faker in the default connectors folder (installed once, then reused)."""
    patch = pytest.MonkeyPatch()
    patch.setenv(install.CACHE_ENV, str(CONNECTORS_DIR))
    if UV_CACHE.is_dir():
        patch.setenv("UV_CACHE_DIR", str(UV_CACHE))
    try:
        done = install.ensure_installed("source-faker", FAKER_VERSION)
    except ConnectorError as exc:
        patch.undo()
        pytest.skip(f"airbyte-source-faker could not be installed: {exc}")
    yield done.executable
    patch.undo()


def test_source_faker_syncs_incrementally_twice_into_duckdb(
    faker_installed: Path, warehouse, tmp_path: Path
) -> None:
    """Run 1 through ``package:``; run 2 through a wrapper that logs the ``--state`` file.

    Faker's incremental quirk: given a state holding ``updated_at`` and ``always_updated:
    false``, it emits nothing; so run 2 must pass run 1's state and add no row.
    """
    log = tmp_path / "states.jsonl"
    wrapper = tmp_path / "source-faker"
    wrapper.write_text(
        "#!/bin/sh\n"
        'state=null; prev=""\n'
        'for a in "$@"; do [ "$prev" = --state ] && state=$(cat "$a"); prev=$a; done\n'
        f'[ "$1" = read ] && echo "$state" >> {log}\n'
        f'exec {faker_installed} "$@"\n'
    )
    wrapper.chmod(0o755)
    config = {"count": 200, "seed": 7, "records_per_slice": 50, "always_updated": False}
    streams = {"users": {"sync": "incremental_deduped"}}
    source = {"package": "airbyte-source-faker", "version": FAKER_VERSION, "config": config}
    sync(warehouse, tmp_path, source, streams, "r1")
    users = stored(warehouse, "users")
    assert users["airbyte_state"][0]["stream"]["stream_state"]["loop_offset"] == 200
    first = rows(warehouse, "users", "id, email, address, _mds_run_id")
    assert [r[0] for r in first] == list(range(1, 201))
    assert json.loads(first[0][2])["country_code"] and {r[3] for r in first} == {"r1"}
    (entry,) = sync(
        warehouse, tmp_path, {"executable": str(wrapper), "config": config}, streams, "r2"
    )
    assert [json.loads(line) for line in log.read_text().splitlines()] == [users["airbyte_state"]]
    assert entry.rows_read == 0
    assert rows(warehouse, "users", "id, email, address, _mds_run_id") == first  # no duplicates
    assert stored(warehouse, "users") == users
