"""The ``airbyte_server`` source against a local Airbyte API (tests/servers/airbyte_api_server.py).

Real HTTP through the real ``airbyte-api`` SDK: job lifecycles (queued -> running ->
succeeded, incomplete attempts, statuses the SDK does not know), failures with Airbyte's
message, a job already running (409), timeouts and interruptions that cancel the job, a
server that stops answering (request timeouts), bearer and client-credentials auth (token
fetch and refresh), and a pipeline-level check that the streams Airbyte loaded select
their dbt models.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from connectors import load_source
from connectors.airbyte import serve as airbyte_serve
from connectors.airbyte import server as airbyte_server
from connectors.airbyte.api import AirbyteClient
from connectors.base import Checkpoint, ConfiguredStream, ExternalLoad, Source
from connectors.errors import ConnectorError, SourceUnavailable
from stack import transform
from stack.config import SourceConfig
from stack.load import plan_stream, sync_stream
from stack.load.plan import RunContext
from stack.run import pipeline
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.servers.airbyte_api_server import AirbyteApi, connection, serving

CONN = "9924bcd0-99be-453d-ba47-c2c9766f7da5"
TOKEN = "tok-bearer-7f3a91c2"
SECRET = "csecret-5e8d2b71"
STREAMS = [
    {
        "name": "orders",
        "syncMode": "incremental_deduped_history",
        "cursorField": ["updated_at"],
        "primaryKey": [["id"]],
    },
    {"name": "customers", "syncMode": "full_refresh_overwrite", "primaryKey": [["id"]]},
]


@pytest.fixture(autouse=True)
def _fresh_job_sharing(monkeypatch):
    """Each test starts with no job shared from another test's server."""
    monkeypatch.setattr(airbyte_server, "_SHARED", airbyte_server._SharedJobs())


@pytest.fixture
def api() -> AirbyteApi:
    return AirbyteApi(bearer={TOKEN}, connections={CONN: connection(CONN, STREAMS)})


@pytest.fixture
def url(api: AirbyteApi) -> Iterator[str]:
    with serving(api) as root:
        yield root


def _source(url: str, **extra) -> Source:
    config = {"api_url": url, "connection_id": CONN, "bearer": TOKEN, "poll_interval": 0.01}
    return load_source("airbyte_server", "ab", config | extra)


def _read(source: Source, stream: str = "orders") -> list:
    spec = source.discover().stream(stream)
    return list(source.read(ConfiguredStream(spec, spec.sync_modes[0]), None))


def test_discover_reports_the_connection_streams_and_check_the_connection(url, api):
    source = _source(url)
    assert source.check().ok
    catalog = source.discover()
    assert catalog.names == ("orders", "customers")
    orders, customers = catalog.streams
    assert orders.sync_modes == ("incremental_deduped",) and orders.loaded_externally
    assert orders.primary_key == ("id",) and orders.cursor == "updated_at"
    assert customers.sync_modes == ("full_refresh_overwrite",) and customers.cursor is None

    missing = _source(url, connection_id="00000000-0000-0000-0000-000000000000").check()
    assert not missing.ok and "connection_id" in missing.message and "404" in missing.message
    api.connections[CONN]["status"] = "inactive"
    assert "inactive" in source.check().message


def test_a_sync_is_triggered_polled_until_it_succeeds_and_reported(url, api):
    api.script = ["pending", "queued", "running", "incomplete", "running", "succeeded"]
    source = _source(url)
    assert _read(source) == [
        ExternalLoad("orders", 1234, 56789, "Airbyte job 4242"),
        Checkpoint("orders", {"job_id": 4242}),
    ]
    assert api.requests("POST") == ["/v1/jobs"]
    assert api.requests("GET").count("/v1/jobs/4242") == 5  # queued..succeeded, one per poll
    # the other streams of the connection were loaded by the same job: a source built for
    # another stream (as each Prefect task builds one) reports it, and starts no second job
    again = _read(_source(url), "customers")[0]
    assert again == ExternalLoad("customers", 1234, 56789, "Airbyte job 4242")
    assert api.requests("POST") == ["/v1/jobs"]
    # a stream that has reported the job starts the next one (the next run)
    assert _read(_source(url))[0].job == "Airbyte job 4243"


def test_streams_synced_in_parallel_share_one_job(url, api):
    api.script = ["running"] * 5 + ["succeeded"]
    with ThreadPoolExecutor(2) as pool:
        loads = list(pool.map(lambda s: _read(_source(url), s)[0], ["orders", "customers"]))
    assert [load.job for load in loads] == ["Airbyte job 4242"] * 2
    assert api.requests("POST") == ["/v1/jobs"] and len(api.jobs) == 1


def test_statuses_the_sdk_does_not_know_keep_the_polling_going(url, api):
    api.script = ["running", "waiting_for_capacity", "succeeded"]
    assert isinstance(_read(_source(url))[0], ExternalLoad)


@pytest.mark.parametrize("status, retryable", [("failed", True), ("cancelled", False)])
def test_a_failed_or_cancelled_job_fails_the_stream(url, api, status, retryable):
    api.script = ["running", status]
    with pytest.raises(ConnectorError) as err:
        _read(_source(url))
    assert f"Airbyte sync job 4242 {status} after PT1M2S" in str(err.value)
    assert err.value.retryable is retryable
    assert api.requests("DELETE") == []


def test_a_running_job_is_waited_for_or_refused(url, api):
    theirs = api.add_job(CONN, ["running", "running", "succeeded"])
    [load, _] = _read(_source(url))
    assert load.job == f"Airbyte job {theirs.id}" and len(api.jobs) == 1
    assert api.requests("POST") == ["/v1/jobs"]  # answered 409, then the job was listed

    api.add_job(CONN, ["running"])
    with pytest.raises(ConnectorError) as err:
        _read(_source(url, on_running="fail"))
    assert "A sync is already running for: " + CONN in str(err.value)
    assert err.value.retryable and err.value.key == "on_running"


def test_a_job_still_running_at_the_timeout_is_cancelled(url, api):
    api.script = ["running"]
    with pytest.raises(ConnectorError) as err:
        _read(_source(url, timeout=0.2))
    assert err.value.key == "timeout" and "cancelled" in str(err.value)
    assert api.requests("DELETE") == ["/v1/jobs/4242"]
    assert api.jobs[4242].status == "cancelled"


def test_a_timeout_whose_cancel_is_refused_says_the_job_may_still_run(url, api):
    api.script, api.refuse_cancel = ["running"], True
    with pytest.raises(ConnectorError) as err:
        _read(_source(url, timeout=0.2))
    message = str(err.value)
    assert "did not finish within 0.2 s; cancelling it failed too" in message
    assert "Not allowed to cancel job 4242" in message and "may still be running" in message
    assert "was cancelled" not in message and "cancel job 4242 in Airbyte" in message
    assert api.requests("DELETE") == ["/v1/jobs/4242"]  # tried once, not again on the way out
    assert api.jobs[4242].status == "running"


def test_an_interrupted_read_cancels_its_job_but_not_a_job_it_attached_to(url, api, monkeypatch):
    api.script = ["running"]
    polled: list[int] = []
    poll = AirbyteClient.job

    def poll_then_interrupt(client: AirbyteClient, job_id: int):
        """Ctrl-C while the job is waited for: as every 2nd poll's answer arrives."""
        job = poll(client, job_id)
        polled.append(job.id)
        if len(polled) % 2 == 0:
            raise KeyboardInterrupt
        return job

    monkeypatch.setattr(AirbyteClient, "job", poll_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _read(_source(url))
    assert polled == [4242, 4242]  # interrupted while job 4242 (started here) was running
    assert api.requests("DELETE") == ["/v1/jobs/4242"]
    assert api.jobs[4242].status == "cancelled"

    theirs = api.add_job(CONN, ["running"])
    with pytest.raises(KeyboardInterrupt):
        _read(_source(url))
    assert polled[2:] == [theirs.id] * 2  # attached to it (409), interrupted while it ran
    assert api.requests("DELETE") == ["/v1/jobs/4242"]  # no cancel of theirs
    assert api.jobs[theirs.id].status == "running"


def test_a_server_that_stops_answering_fails_the_poll_within_the_timeout(url, api):
    api.script, api.silent_polls = ["running"], True  # GET /v1/jobs/{id}: never answered
    started = time.monotonic()
    with pytest.raises(SourceUnavailable) as err:
        _read(_source(url, request_timeout=0.2))
    took = time.monotonic() - started
    message = str(err.value)
    assert err.value.retryable and err.value.key == "request_timeout"
    assert f"GET /v1/jobs/4242 to the Airbyte API at {url} timed out after 0.2 s" in message
    assert "gave up waiting for Airbyte job 4242: 3 polls in a row failed" in message
    # each poll is retried for up to twice the timeout (one retry here); then the job is
    # cancelled, answered while the unanswered polls still hold their connections
    assert 3 <= api.requests("GET").count("/v1/jobs/4242") <= 6
    assert "; it was cancelled" in message and api.jobs[4242].status == "cancelled"
    assert took < 10, f"took {took:.1f} s"


@pytest.mark.parametrize("auth", ["bearer", "client credentials"])
def test_a_server_that_accepts_but_never_answers_fails_check_within_the_timeout(auth):
    credentials = {"bearer": TOKEN}
    if auth == "client credentials":
        credentials = {"client_id": "cid-silent", "client_secret": SECRET}
    # connections complete in the listen queue, and nothing ever reads or answers them
    with socket.create_server(("127.0.0.1", 0), backlog=16) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        config = {"api_url": url, "connection_id": CONN, "request_timeout": 0.2}
        started = time.monotonic()
        result = load_source("airbyte_server", "ab", config | credentials).check()
        took = time.monotonic() - started
    request = "GET /v1/connections/" + CONN if auth == "bearer" else "POST /v1/applications/token"
    assert not result.ok
    assert f"{request} to the Airbyte API at {url} timed out after 0.2 s" in result.message
    assert "request_timeout" in result.message and SECRET not in result.message
    assert took < 5, f"took {took:.1f} s"


def test_a_refused_token_is_a_clear_error_without_the_token(url, api, caplog):
    caplog.set_level(logging.DEBUG)
    source = _source(url, bearer="tok-wrong-0a1b2c")
    with pytest.raises(ConnectorError) as err:
        _read(source)
    assert "401" in str(err.value) and err.value.key == "bearer" and not err.value.retryable
    assert not source.check().ok
    assert "tok-wrong-0a1b2c" not in str(err.value) + caplog.text
    assert "tok-wrong-0a1b2c" not in repr(source.__dict__)


def test_client_credentials_fetch_a_token_and_refresh_it_when_refused(url, api, caplog):
    caplog.set_level(logging.DEBUG)
    client_id = f"cid-{uuid.uuid4().hex[:8]}"  # the SDK caches tokens per client id + secret
    api.clients[client_id] = SECRET
    api.token_uses = 2  # every token is refused from its third use on
    api.script = ["running", "running", "running", "succeeded"]
    config = {"api_url": url, "connection_id": CONN, "poll_interval": 0.01, "client_id": client_id}
    source = load_source("airbyte_server", "ab", config | {"client_secret": SECRET})
    assert isinstance(_read(source)[0], ExternalLoad)
    token_path = [p for m, p, _ in api.calls if p.endswith("/applications/token")]
    assert token_path and set(token_path) == {"/v1/applications/token"}  # not /applications
    assert api.tokens_issued >= 3
    refused = [p for _, p, ok in api.calls if not ok]
    assert refused, "a token should have been refused and replaced"
    assert SECRET not in caplog.text

    wrong = load_source("airbyte_server", "ab", config | {"client_secret": "nope-" + SECRET})
    with pytest.raises(ConnectorError) as err:
        wrong.discover()
    assert err.value.key == "client_secret" and SECRET not in str(err.value)


def test_an_expiring_token_is_fetched_again(url, api):
    client_id = f"cid-{uuid.uuid4().hex[:8]}"
    api.clients[client_id] = SECRET
    api.token_ttl = 60  # the SDK renews a token 60 s before it expires: at every call here
    config = {"api_url": url, "connection_id": CONN, "client_id": client_id}
    source = load_source("airbyte_server", "ab", config | {"client_secret": SECRET})
    source.discover()
    source.discover()
    assert api.tokens_issued == 2


@pytest.mark.parametrize(
    "config, key",
    [
        ({"bearer": TOKEN}, "connection_id"),
        ({"connection_id": CONN}, "bearer"),
        ({"connection_id": CONN, "bearer": TOKEN, "client_id": "x"}, "bearer"),
        ({"connection_id": CONN, "bearer": TOKEN, "timeout": -1}, "timeout"),
        ({"connection_id": CONN, "bearer": TOKEN, "request_timeout": 0}, "request_timeout"),
        ({"connection_id": CONN, "bearer": TOKEN, "on_running": "queue"}, "on_running"),
        ({"connection_id": CONN, "bearer": TOKEN, "api_key": "x"}, "api_key"),
    ],
)
def test_bad_config_names_the_key(config, key):
    source = load_source("airbyte_server", "ab", config)
    result = source.check()
    assert not result.ok and key in result.message and TOKEN not in result.message
    with pytest.raises(ConnectorError, match=key):
        source.discover()


# --- the pipeline: Airbyte loads, mdstack records the run and selects dbt models -----------


def test_after_an_airbyte_sync_dbt_selects_the_streams_it_loaded(tmp_path, url, api, monkeypatch):
    monkeypatch.setenv("AIRBYTE_TOKEN", TOKEN)
    config = {
        "name": "ab",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(tmp_path / "warehouse")}},
        "sources": {
            "airbyte_shop": {
                "connector": "airbyte_server",
                "config": {
                    "api_url": url,
                    "connection_id": CONN,
                    "bearer": "${env:AIRBYTE_TOKEN}",
                    "poll_interval": 0.01,
                },
                "schema": "raw_airbyte",
                "streams": {
                    "orders": {"sync": "incremental_deduped"},
                    "customers": {"sync": "full_refresh_overwrite"},
                },
            }
        },
    }
    path = tmp_path / "stack.yml"
    path.write_text(yaml.safe_dump(config))
    loaded = pipeline.load_config(path)
    region = loaded.region_names()[0]

    def sync(run_id: str) -> list[dict]:
        selection = pipeline.select(loaded, region, ["airbyte_shop"], ["orders", "customers"])
        return pipeline.sync_selection(path, None, selection, run_id)

    entries = sync("run1")
    assert sorted((e.stream, e.status, e.rows_read) for e in entries) == [
        ("customers", "succeeded", 1234),
        ("orders", "succeeded", 1234),
    ]
    changed = pipeline.changed_streams(entries)
    assert transform.selection(changed).args() == [
        "--select",
        "source:airbyte_shop.customers+",
        "source:airbyte_shop.orders+",
        "--full-refresh",
    ]
    assert len(api.jobs) == 1  # one job for both streams

    api.rows = 0  # a sync that moved nothing: only the full refresh counts as changed
    changed = pipeline.changed_streams(sync("run2"))
    assert changed == {"airbyte_shop": {"customers": True}}

    with DuckDBWarehouse(tmp_path / "warehouse") as wh:
        assert wh.columns("raw_airbyte", "orders") is None  # Airbyte's tables, not ours
        runs = wh.query(
            "SELECT run_id, stream, status, inserted FROM _mds_runs ORDER BY run_id, stream"
        ).to_pylist()
        states = wh.query("SELECT stream, state FROM _mds_state ORDER BY stream").to_pylist()
    assert [(r["run_id"], r["stream"], r["inserted"]) for r in runs] == [
        ("run1", "customers", 1234),
        ("run1", "orders", 1234),
        ("run2", "customers", 0),
        ("run2", "orders", 0),
    ]
    assert states == [
        {"stream": "customers", "state": '{"job_id": 4243}'},
        {"stream": "orders", "state": '{"job_id": 4243}'},
    ]


def test_a_failed_airbyte_job_is_a_failed_run_in_the_ledger(url, api, warehouse):
    api.script = ["running", "failed"]
    source = _source(url)
    source_cfg = SourceConfig.model_validate(
        {"connector": "airbyte_server", "schema": "raw_airbyte", "streams": {"orders": {}}}
    )
    plan = plan_stream("ab", source_cfg, source.discover(), "orders")
    with pytest.raises(ConnectorError):
        sync_stream(warehouse, source, plan, RunContext("p", "eu", "r1"))
    [run] = warehouse.query("SELECT status, error FROM _mds_runs").to_pylist()
    assert run["status"] == "failed" and "Airbyte sync job 4242 failed" in run["error"]


def test_mdstack_source_refuses_to_serve_a_connection_and_starts_no_job(url, api, tmp_path):
    config, catalog = tmp_path / "config.json", tmp_path / "catalog.json"
    config.write_text(json.dumps({"api_url": url, "connection_id": CONN, "bearer": TOKEN}))
    entry = {"stream": {"name": "orders"}, "sync_mode": "incremental"}
    catalog.write_text(json.dumps({"streams": [entry]}))
    out = io.BytesIO()
    argv = ["airbyte_server", "read", "--config", str(config), "--catalog", str(catalog)]
    assert airbyte_serve.main(argv, out) == 1
    messages = [json.loads(line) for line in out.getvalue().splitlines()]
    [trace] = [m["trace"] for m in messages if m["type"] == "TRACE"]
    assert "loaded into the warehouse by another system" in trace["error"]["message"]
    assert api.requests("POST") == []  # no Airbyte job was started
