"""RestSource against a real local HTTP API (:mod:`tests.servers.rest_server`), faults and all.

Every test mounts its own API on the session's server, so the call logs it checks are its
own. Records are compared with what the server holds, nested values as their JSON text.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors import load_source
from connectors.base import Batch, Checkpoint, ConfiguredStream, Source, StreamSpec
from connectors.errors import ConnectorError, SourceUnavailable
from connectors.http import mask_url
from connectors.rest import RestSource
from connectors.rest import http as rest_http
from connectors.rest.columns import Columns
from connectors.rest.decode import PageDecoder
from connectors.rest.jsonpath import JsonPath, JsonPathError
from stack.config import SourceConfig
from stack.load import EVERY_CHECKPOINT, sync_stream
from stack.load.plan import RunContext, plan_stream
from tests.servers.rest_server import FAULTS, Api, RestServer, serving

SECRET = "tok-5up3r-s3cr3t-v4lu3"


@pytest.fixture(scope="session")
def rest_server() -> Iterator[RestServer]:
    """One local API server for the whole test session (each test mounts its own API)."""
    with serving() as server:
        yield server


PAGINATION = {
    "page_number": {
        "type": "page_number",
        "size_param": "per_page",
        "size": 40,
        "total_pages_path": "$.meta.total_pages",
    },
    "offset": {"type": "offset", "limit": 40, "total_path": "$.meta.total"},
    "cursor": {"type": "cursor", "cursor_path": "$.meta.next", "param": "after"},
    "link_header": {"type": "link_header"},
    "next_url": {"type": "next_url", "path": "$.next"},
    "none": {"type": "none"},
}
SELECTOR = {"data": "$.data", "list": "$", "nested": "$.result.items[*]"}


def config(server: RestServer, api: Api, **overrides: Any) -> dict[str, Any]:
    """The ads config of the README, pointed at ``api``."""
    records = SELECTOR[api.envelope]
    return {
        "base_url": server.base_url(api),
        "pagination": PAGINATION[api.pagination],
        "rate_limit": {"max_concurrency": 4},
        "timeout": 5,
        "retries": {"max": 5, "backoff": 0.01},
        "streams": {
            "campaigns": {"path": "/campaigns", "records": records, "primary_key": ["id"]},
            "spend": {
                "path": "/spend",
                "records": records,
                "primary_key": ["date", "campaign_id"],
                "cursor": "date",
                "cursor_param": "since",
            },
            "ad_groups": {
                "path": "/campaigns/{parent.id}/ad_groups",
                "parent": "campaigns",
                "records": records,
                "primary_key": ["id"],
            },
            "events": {"path": "/events", "records": records, "primary_key": ["id"]},
        },
    } | overrides


def read(
    source: RestSource, name: str, mode: str = "full_refresh_overwrite", state: dict | None = None
) -> tuple[list[pa.RecordBatch], list[dict]]:
    spec = _spec(source, name)
    messages = list(source.read(ConfiguredStream(spec, mode, spec.cursor), state))
    batches = [m.data for m in messages if isinstance(m, Batch)]
    states = [m.state for m in messages if isinstance(m, Checkpoint)]
    assert isinstance(messages[-1], Checkpoint)
    return batches, states


def _spec(source: RestSource, name: str) -> StreamSpec:
    """A spec without discover (which would cost requests the tests count)."""
    cfg = source.config.streams[name]
    modes = ("full_refresh_overwrite", "full_refresh_append", "incremental_append")
    return StreamSpec(name, pa.schema([]), cfg.primary_key, cfg.cursor, modes)


def rows(batches: list[pa.RecordBatch]) -> list[dict[str, Any]]:
    """Every row, as dicts without nulls (so batches of different schemas compare)."""
    out = []
    for batch in batches:
        out += [{k: v for k, v in r.items() if v is not None} for r in batch.to_pylist()]
    return out


def as_loaded(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the source makes of the server's records: nested values as JSON text."""
    return [
        {
            k: orjson.dumps(v).decode() if isinstance(v, dict | list) else v
            for k, v in r.items()
            if v is not None
        }
        for r in records
    ]


# --- pagination, selectors, parents ---------------------------------------------------------


@pytest.mark.parametrize(
    ("pagination", "envelope"),
    [
        ("page_number", "data"),
        ("offset", "data"),
        ("cursor", "data"),
        ("link_header", "list"),
        ("next_url", "nested"),
        ("none", "data"),
    ],
)
def test_each_pagination_style_reads_every_record(rest_server, pagination, envelope):
    api = rest_server.mount(pagination=pagination, envelope=envelope)
    source = RestSource("ads", config(rest_server, api))
    batches, states = read(source, "campaigns")
    assert rows(batches) == as_loaded(api.expected("campaigns"))
    assert states == [{}]
    pages = -(-230 // (40 if pagination in ("page_number", "offset") else 50))
    sent = len(api.data_calls())
    assert sent == (1 if pagination == "none" else pages), api.calls  # no page twice
    assert all(c.outcome == "200" for c in api.calls)


def test_numbered_pages_are_fetched_concurrently_within_the_limit(rest_server):
    api = rest_server.mount(pagination="page_number", campaigns=2000, max_page_size=50)
    cfg = config(rest_server, api, rate_limit={"max_concurrency": 3})
    cfg["pagination"] = {"type": "page_number", "size_param": "per_page", "size": 10}
    batches, _ = read(RestSource("ads", cfg), "campaigns")
    assert [r["id"] for r in rows(batches)] == list(range(1, 2001))
    assert 1 < api.max_in_flight <= 3
    assert len(api.data_calls()) <= 201 + 2  # to the empty page 201, at most 2 more


def test_a_404_past_the_last_page_ends_the_stream_and_a_repeated_page_fails(rest_server):
    api = rest_server.mount(pagination="page_number", out_of_range_404=True)
    cfg = config(rest_server, api)
    cfg["pagination"] = {"type": "page_number", "size_param": "per_page", "size": 46}
    batches, _ = read(RestSource("ads", cfg), "campaigns")  # 5 full pages, then 404s
    assert rows(batches) == as_loaded(api.expected("campaigns"))
    assert "404" in {c.outcome for c in api.calls}
    cfg["pagination"] = {"type": "page_number", "param": "pg", "size_param": "per_page", "size": 40}
    with pytest.raises(ConnectorError, match="pagination does not advance") as err:
        read(RestSource("ads", cfg), "campaigns")  # the API ignores `pg`: page 1 every time
    assert "pg=2" in str(err.value)


def test_parent_child_streams_get_the_parent_key(rest_server):
    api = rest_server.mount(pagination="cursor")
    batches, _ = read(RestSource("ads", config(rest_server, api)), "ad_groups")
    assert rows(batches) == as_loaded(api.expected("ad_groups"))
    child_calls = [c for c in api.calls if c.path.endswith("/ad_groups")]
    assert len(child_calls) == 230
    cfg = config(rest_server, api)
    cfg["streams"]["ad_groups"]["parent_fields"] = {"campaign_id": "id"}
    batches, _ = read(RestSource("ads", cfg), "ad_groups")
    assert {r["campaign_id"] for r in rows(batches)} == {c for c in range(1, 231) if c % 4}


def test_jsonpath_subset():
    doc = {"data": [{"id": 1}, {"id": 2}], "meta": {"next": "c2"}, "odd key": {"x": [5, 6]}}
    assert JsonPath("$.data").records(doc) == [{"id": 1}, {"id": 2}]
    assert JsonPath("$.data[*]").records(doc) == [{"id": 1}, {"id": 2}]
    assert JsonPath("$.data[*].id").find(doc) == [1, 2]
    assert JsonPath("$.data[-1]").records(doc) == [{"id": 2}]
    assert JsonPath("$['odd key'].x[1]").first(doc) == 6
    assert JsonPath("$").records([{"a": 1}]) == [{"a": 1}]
    assert JsonPath("$").records({"a": 1}) == [{"a": 1}]
    assert JsonPath("$.missing").records(doc) == []
    with pytest.raises(JsonPathError, match="unsupported syntax"):
        JsonPath("$..id")


# --- types ----------------------------------------------------------------------------


def test_schema_is_inferred_and_widened_as_pages_arrive(rest_server):
    api = rest_server.mount(pagination="page_number")
    cfg = config(rest_server, api, batch_size=20)
    cfg["pagination"] = {"type": "page_number", "size_param": "per_page", "size": 20}
    source = RestSource("ads", cfg)
    spec = source.discover().stream("events")  # from the first page: ids 1-20
    assert spec.schema == pa.schema(
        [("id", pa.int64()), ("value", pa.int64()), ("code", pa.int64()), ("flag", pa.bool_())]
    )
    batches, _ = read(source, "events")
    types = [{f.name: str(f.type) for f in b.schema} for b in batches]
    assert types[0] == {"id": "int64", "value": "int64", "code": "int64", "flag": "bool"}
    assert types[2]["value"] == "double"  # ids 41-60: floats from here on
    assert types[3] == {
        "id": "int64",
        "value": "double",
        "code": "string",  # ids 61+: text codes
        "flag": "bool",
        "extra": "string",  # a new field: an object, as JSON text
    }
    got = rows(batches)
    assert [r["value"] for r in got] == [e["value"] for e in api.expected("events")]
    assert got[64]["extra"] == '{"n":65,"tags":["x","x"]}'


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=4)
_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _TEXT
_VALUES = st.recursive(
    _SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=4,
)
_RECORDS = st.lists(st.dictionaries(st.sampled_from("abcd"), _VALUES, max_size=4), max_size=40)


@settings(max_examples=150, deadline=None)
@given(records=_RECORDS, size=st.integers(1, 40))
def test_widening_never_loses_a_value_and_types_only_widen(records, size):
    """Any JSON records, in batches of any size: each value comes out as itself, as a float
    (an integer in a float column) or as text (JSON text unless it was a string)."""
    columns = Columns("s")
    widths: dict[str, int] = {}
    rank = {pa.bool_(): 0, pa.int64(): 0, pa.float64(): 1, pa.string(): 2}
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        batch = columns.to_batch(chunk)
        assert batch.num_rows == len(chunk)
        for field in batch.schema:  # a column's type never narrows again
            assert rank[field.type] >= widths.get(field.name, 0), field
            widths[field.name] = rank[field.type]
        for record, out in zip(chunk, batch.to_pylist(), strict=True):
            for key, value in record.items():
                got = out.get(key)
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                assert (
                    (value is None and got is None)
                    or (got == value and type(got) is type(value))
                    or (type(value) is int and type(got) is float and got == float(value))
                    or (isinstance(got, str) and got == text)
                ), (key, value, got)


_PAGE_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
    | st.sampled_from(["2026-01-02", "2026-01-02T03:04:05Z", "1.50"])
    | st.dictionaries(_TEXT, st.integers(0, 9), max_size=2)
    | st.lists(st.booleans(), max_size=2)
)
_PAGES = st.lists(
    st.lists(st.dictionaries(st.sampled_from("abcd"), _PAGE_VALUES, max_size=4), max_size=6),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(pages=_PAGES, envelope=st.sampled_from(["data", "list", "nested"]), pretty=st.booleans())
def test_pages_read_into_arrow_equal_the_json_path(pages, envelope, pretty):
    """Whatever a page holds, reading it straight into Arrow gives exactly what orjson and
    Columns.to_batch give (same values, same types), or declines and leaves it to them."""
    selector = JsonPath(SELECTOR[envelope])
    decoder = PageDecoder.of(selector)
    assert decoder is not None
    reference, fast = Columns("s"), Columns("s")
    for records in pages:
        doc: Any = {"data": records, "meta": {"n": 1}}
        if envelope == "list":
            doc = records
        elif envelope == "nested":
            doc = {"result": {"items": records}, "next": None}
        body = json.dumps(doc, indent=2).encode() if pretty else orjson.dumps(doc)
        expected = reference.to_batch(records)
        decoded = decoder.decode(body)
        got = None
        if decoded is not None and decoded.batch is not None:
            assert decoded.batch.num_rows == len(records)
            got = fast.fit(decoded.batch)
        if got is None:
            got = fast.to_batch(records)
        assert got.schema == expected.schema
        assert got.equals(expected), (got.to_pylist(), expected.to_pylist())
        assert fast.types == reference.types
        decoder.settle(fast.parse_types())


@pytest.mark.parametrize(
    ("selector", "body"),
    [
        ("$.data", b"null"),  # pyarrow's reader crashes the process on this one
        ("$.data", b" null\n{}"),
        ("$.data", b'\xef\xbb\xbf{"data": [{"id": 1}]}'),  # a BOM: orjson refuses it
        ("$.data", b'{"data": [{"id": 1, "v": NaN}]}'),
        ("$.data", b'{"data": [{"id": 1, "v": -Infinity}]}'),
        ("$.data", b'{"data": [{"id": 1, "s": "\xff"}]}'),  # not UTF-8
        ("$.data", b'{"data": [{"id": 1, "v": -0}]}'),  # orjson: the integer 0
        ("$", b'[{"id": 1}], "z": 1'),  # not one JSON document once wrapped
        ("$.data", b'{"data": [{"id": 2, "v": 100000000000000000000000000000000000000}]}'),
    ],
)
def test_bodies_orjson_would_refuse_or_read_otherwise_are_left_to_it(selector, body):
    decoder = PageDecoder.of(JsonPath(selector))
    decoder.settle({"id": pa.int64(), "v": pa.float64(), "s": pa.string()})
    decoded = decoder.decode(body)
    assert decoded is not None and decoded.batch is None


def test_an_integer_cursor_in_a_float_column_is_saved_as_an_integer(rest_server):
    api = rest_server.mount(pagination="page_number", bench_records=30)
    cfg = config(rest_server, api)
    cfg["pagination"] = PAGINATION["page_number"] | {"size": 5}
    declared = {"id": "number"}  # read as floats: the cursor's state must stay an integer
    stream = {"path": "/bench", "records": "$.data", "primary_key": ["id"], "cursor": "id"}
    cfg["streams"] = {"bench": stream | {"schema": declared}}
    source = RestSource("ads", cfg)
    batches, states = read(source, "bench", "incremental_append")
    assert sum(b.num_rows for b in batches) == 30
    assert states[-1] == {"cursor": 29} and type(states[-1]["cursor"]) is int


def test_flat_pages_are_read_straight_into_arrow_in_every_pagination(rest_server, caplog):
    """Once the first page has settled the types, pages are read into Arrow: all but those
    already fetched by then (at most the 8 prefetched, one held, 4 in flight, the first)."""
    size = 10
    for pagination in ("page_number", "cursor", "next_url"):
        api = rest_server.mount(pagination=pagination, bench_records=400)
        cfg = config(rest_server, api)
        stream = {"path": "/bench", "records": "$.data", "primary_key": ["id"]}
        cfg["streams"] = {"bench": stream | {"params": {"per_page": size, "limit": size}}}
        if pagination == "page_number":
            cfg["pagination"] = PAGINATION["page_number"] | {"size": size}
        with caplog.at_level(logging.INFO, logger="connectors.rest"):
            batches, _ = read(RestSource("ads", cfg), "bench")
        assert rows(batches) == api.expected("bench")
        line = next(r.getMessage() for r in caplog.records if "read ads.bench" in r.getMessage())
        decoded, total = map(int, re.search(r"(\d+) of (\d+) pages read straight", line).groups())
        assert total == 400 // size and decoded >= total - 14, line
        caplog.clear()


def test_declared_schema_needs_no_request_and_types_the_columns(rest_server):
    api = rest_server.mount(pagination="cursor")
    cfg = config(rest_server, api)
    declared = {"date": "date", "amount": "number", "campaign_id": "integer"}
    cfg["streams"] = {"spend": cfg["streams"]["spend"] | {"schema": declared}}
    source = RestSource("ads", cfg)
    spec = source.discover().stream("spend")
    assert api.calls == []  # the key and the cursor are declared: nothing to infer
    assert spec.schema == pa.schema(
        [("date", pa.date32()), ("amount", pa.float64()), ("campaign_id", pa.int64())]
    )
    assert spec.sync_modes[-2:] == ("incremental_append", "incremental_deduped")
    del declared["campaign_id"]  # a key column to infer: one request, declared types win
    spec = RestSource("ads", cfg).discover().stream("spend")
    assert len(api.calls) == 1
    assert spec.schema.field("date").type == pa.date32()
    assert spec.schema.field("campaign_id").type == pa.int64()
    assert spec.schema.field("clicks").type == pa.int64()
    batches, _ = read(source, "spend")
    assert batches[0].schema.field("date").type == pa.date32()
    assert batches[0].schema.field("clicks").type == pa.int64()  # not declared: inferred
    cfg["streams"]["spend"]["schema"] = {"date": "integer"}
    with pytest.raises(ConnectorError, match="do not fit the declared type 'integer'") as err:
        read(RestSource("ads", cfg), "spend")
    assert err.value.key == "streams.spend.schema.date"


# --- incremental ------------------------------------------------------------------------


def test_incremental_sends_the_cursor_and_resumes_from_state(rest_server):
    api = rest_server.mount(pagination="cursor", spend_days=40)
    source = RestSource("ads", config(rest_server, api))
    batches, states = read(source, "spend", "incremental_append")
    assert rows(batches) == api.expected("spend")
    assert states[-1] == {"cursor": "2026-02-09"}
    assert "since" not in api.calls[0].query
    api.spend_days = 43  # three more days at the source
    batches, states = read(source, "spend", "incremental_append", states[-1])
    assert rows(batches) == api.expected("spend", since="2026-02-10")
    assert api.calls[-1].query["since"] == "2026-02-09"  # the API is inclusive: one day dropped
    assert states[-1] == {"cursor": "2026-02-12"}
    batches, states = read(source, "spend", "incremental_append", states[-1])
    assert (batches, states) == ([], [{"cursor": "2026-02-12"}])


def test_lookback_rereads_but_never_moves_the_state_back(rest_server):
    api = rest_server.mount(pagination="cursor", spend_days=40)
    cfg = config(rest_server, api)
    cfg["streams"]["spend"]["lookback"] = "P2D"
    batches, states = read(
        RestSource("ads", cfg), "spend", "incremental_append", {"cursor": "2026-02-09"}
    )
    assert {r["date"] for r in rows(batches)} == {"2026-02-08", "2026-02-09"}
    assert api.calls[-1].query["since"] == "2026-02-07"
    assert states == [{"cursor": "2026-02-09"}]


@pytest.mark.parametrize(("page_size", "least"), [(5, 6), (7, 1)])
def test_checkpoints_fall_between_cursor_values_and_resume_exactly(rest_server, page_size, least):
    """Five rows per date; batches of 3 pages: a checkpoint wherever a batch starts a new date."""
    api = rest_server.mount(pagination="cursor", spend_days=20)
    cfg = config(rest_server, api, batch_size=12)
    cfg["streams"]["spend"]["params"] = {"limit": page_size}
    source = RestSource("ads", cfg)
    spec = _spec(source, "spend")
    messages = list(source.read(ConfiguredStream(spec, "incremental_append", "date"), None))
    everything = api.expected("spend")
    delivered = 0
    checkpoints = 0
    for message in messages:
        if isinstance(message, Batch):
            delivered += message.data.num_rows
            continue
        checkpoints += 1
        # a checkpoint covers exactly what came before it: resuming from it gives the rest
        assert message.state["cursor"] == everything[delivered - 1]["date"]
        rest, _ = read(source, "spend", "incremental_append", message.state)
        assert rows(rest) == everything[delivered:]
    assert delivered == len(everything) == 100
    assert checkpoints >= least + 1


def test_records_out_of_cursor_order_checkpoint_only_at_the_end(rest_server, caplog):
    api = rest_server.mount(pagination="cursor")
    cfg = config(rest_server, api, batch_size=50)
    cfg["streams"]["campaigns"]["cursor"] = "created_at"
    with caplog.at_level(logging.WARNING, "connectors.rest"):
        _, states = read(RestSource("ads", cfg), "campaigns", "incremental_append")
    assert states == [{"cursor": max(c["created_at"] for c in api.expected("campaigns"))}]
    assert "not in created_at order" in caplog.text


# --- auth -------------------------------------------------------------------------------


AUTHS = {
    "bearer": ({"type": "bearer", "token": SECRET}, {"type": "bearer", "token": SECRET}),
    "api_key_header": (
        {"type": "api_key", "name": "X-Api-Key", "value": SECRET, "in": "header"},
        {"type": "api_key", "name": "X-Api-Key", "value": SECRET, "in": "header"},
    ),
    "api_key_query": (
        {"type": "api_key", "name": "api_key", "value": SECRET, "in": "query"},
        {"type": "api_key", "name": "api_key", "value": SECRET, "in": "query"},
    ),
    "basic": (
        {"type": "basic", "username": "etl", "password": SECRET},
        {"type": "basic", "username": "etl", "password": SECRET},
    ),
    "oauth2_basic": (
        {"type": "oauth2", "client_id": "mds", "client_secret": SECRET, "scope": "read ads"},
        {
            "type": "oauth2_client_credentials",
            "client_id": "mds",
            "client_secret": SECRET,
            "scopes": ["read", "ads"],
        },
    ),
    "oauth2_body": (
        {"type": "oauth2", "client_id": "mds", "client_secret": SECRET},
        {
            "type": "oauth2_client_credentials",
            "client_id": "mds",
            "client_secret": SECRET,
            "client_auth": "body",
        },
    ),
}


@pytest.mark.parametrize("style", sorted(AUTHS))
def test_each_auth_style(rest_server, style):
    server_auth, client_auth = AUTHS[style]
    api = rest_server.mount(pagination="page_number", auth=server_auth)
    if client_auth["type"].startswith("oauth2"):
        client_auth = client_auth | {"token_url": f"{rest_server.base_url(api)}/oauth/token"}
    source = RestSource("ads", config(rest_server, api, auth=client_auth))
    assert source.check().ok
    batches, _ = read(source, "campaigns")
    assert len(rows(batches)) == 230
    calls = api.data_calls()
    if style == "api_key_query":
        assert all(c.query["api_key"] == SECRET for c in calls)
    elif style == "api_key_header":
        assert all(c.headers["x-api-key"] == SECRET for c in calls)
    else:
        assert all(c.headers["authorization"].startswith(("Bearer ", "Basic ")) for c in calls)
    if style.startswith("oauth2"):
        assert len(api.calls) - len(calls) == 1  # one token, cached across check and read


def test_oauth2_token_is_refreshed_before_expiry_and_once_on_401(rest_server, monkeypatch):
    server_auth, client_auth = AUTHS["oauth2_basic"]
    api = rest_server.mount(pagination="cursor", auth=server_auth)
    client_auth = client_auth | {"token_url": f"{rest_server.base_url(api)}/oauth/token"}
    source = RestSource("ads", config(rest_server, api, auth=client_auth))
    read(source, "campaigns")
    tokens = lambda: sum(1 for c in api.calls if c.path == "/oauth/token")  # noqa: E731
    assert tokens() == 1
    api.revoke_tokens()  # the API forgets the token: a 401, a new token, the same request
    read(source, "campaigns")
    assert tokens() == 2
    assert [c.outcome for c in api.calls[-7:]] == ["401", "200", "200", "200", "200", "200", "200"]
    later = time.monotonic() + 3600 - 30  # within the last minute of the token's hour
    monkeypatch.setattr(rest_http, "_now", lambda: later)
    read(source, "campaigns")
    assert tokens() == 3
    assert "401" not in [c.outcome for c in api.calls[-6:]]


# --- failures ---------------------------------------------------------------------------


def test_faults_do_not_change_the_data(rest_server):
    """A third of first attempts (and of second ones) fail: the data is as in a clean run."""
    server_auth, client_auth = AUTHS["oauth2_body"]
    results = {}
    for rate in (0.0, 0.3):
        api = rest_server.mount(
            pagination="page_number", auth=server_auth, fault_rate=rate, slow_seconds=0.5
        )
        auth = client_auth | {"token_url": f"{rest_server.base_url(api)}/oauth/token"}
        retries = {"max": 8, "backoff": 0.01}  # two faults per request at most, and slack
        cfg = config(rest_server, api, auth=auth, timeout=0.25, batch_size=100, retries=retries)
        cfg["pagination"] = PAGINATION["page_number"]
        source = RestSource("ads", cfg)
        results[rate] = {
            "campaigns": read(source, "campaigns"),
            "ad_groups": read(source, "ad_groups"),
            "spend": read(source, "spend", "incremental_append"),
            "events": read(source, "events"),
        }
        if rate:
            outcomes = {c.outcome for c in api.calls}
            assert api.faults / len(api.calls) >= 0.2, (api.faults, len(api.calls))
            assert set(FAULTS) <= outcomes
    for name, (batches, states) in results[0.0].items():
        faulty_batches, faulty_states = results[0.3][name]
        assert pa.Table.from_batches(faulty_batches).equals(pa.Table.from_batches(batches)), name
        assert faulty_states == states
    assert len(rows(results[0.0]["ad_groups"][0])) == 345


def test_retry_after_is_honoured(rest_server):
    api = rest_server.mount(pagination="none", first_faults=["429-wait"])
    started = time.perf_counter()
    read(RestSource("ads", config(rest_server, api)), "events")
    assert time.perf_counter() - started >= 0.95
    assert [c.outcome for c in api.calls] == ["429-wait", "200"]


def test_unavailable_after_retries_is_retryable(rest_server):
    api = rest_server.mount(pagination="none", first_faults=["503", "500", "503"])
    cfg = config(rest_server, api, retries={"max": 2, "backoff": 0.01})
    with pytest.raises(SourceUnavailable, match="failed after 3 attempts; last: HTTP 503") as err:
        read(RestSource("ads", cfg), "campaigns")
    assert err.value.retryable and err.value.stream == "campaigns"
    assert f"GET {rest_server.base_url(api)}/campaigns" in str(err.value)
    dead = config(rest_server, api, base_url="http://127.0.0.1:9", retries={"max": 1, "backoff": 0})
    result = RestSource("ads", dead).check()
    assert not result.ok and "ConnectError" in result.message


BEARER = {"type": "bearer", "token": SECRET}
KEY_IN_QUERY = {"type": "api_key", "name": "api_key", "value": SECRET, "in": "query"}


@pytest.mark.parametrize(
    ("server_auth", "auth", "path", "status", "message"),
    [
        (BEARER, BEARER | {"token": SECRET + "-old"}, "/campaigns", 401, "invalid credentials"),
        (KEY_IN_QUERY, KEY_IN_QUERY | {"value": SECRET + "x"}, "/campaigns", 401, "invalid"),
        (BEARER, BEARER, "/nope", 404, "no such resource: /nope"),
    ],
)
def test_refusals_fail_at_once_naming_url_and_message_without_secrets(
    rest_server, caplog, server_auth, auth, path, status, message
):
    api = rest_server.mount(pagination="none", auth=server_auth)
    cfg = config(rest_server, api, auth=auth)
    cfg["streams"]["campaigns"]["path"] = path
    with caplog.at_level(logging.DEBUG), pytest.raises(ConnectorError) as err:
        read(RestSource("ads", cfg), "campaigns")
    text = str(err.value)
    assert type(err.value) is ConnectorError and not err.value.retryable
    assert f"GET {rest_server.base_url(api)}{path}" in text
    assert f"HTTP {status}: {message}" in text
    assert SECRET not in text and SECRET not in caplog.text and SECRET not in repr(err.value)
    assert err.value.__cause__ is None
    assert len(api.calls) == 1
    if auth["type"] == "api_key":
        assert "api_key=***" in text


# --- config, check, protocol ------------------------------------------------------------


def test_bad_config_names_the_key_and_check_reports_it():
    base = {"base_url": "https://api.example.com", "streams": {"s": {"path": "/s"}}}
    cases = {
        "streams.s": {"streams": {"s": {"path": "/s", "cursor_param": "since"}}},
        "auth.token": {"auth": {"type": "bearer"}},
        "streams.s.records": {"streams": {"s": {"path": "/s", "records": "data"}}},
        "base_url": {"base_url": "ftp://x"},
    }
    for key, change in cases.items():
        source = RestSource("ads", base | change)
        result = source.check()
        assert not result.ok and f"key {key!r}" in result.message, result.message
        with pytest.raises(ConnectorError) as err:
            source.discover()
        assert err.value.key == key
    assert RestSource("ads", base).spec()["properties"]["streams"]["type"] == "object"


def test_registered_and_masks_secrets_in_urls():
    source = load_source("rest", "ads", {"base_url": "http://x", "streams": {"s": {"path": "/"}}})
    assert isinstance(source, RestSource) and isinstance(source, Source)
    masked = mask_url("https://u:pw@h/p?page=2&api_key=k&access_token=t&sig=s")
    assert masked == "https://u:***@h/p?page=2&api_key=***&access_token=***&sig=***"


# --- end to end -------------------------------------------------------------------------


def test_sync_into_duckdb_lands_what_the_server_holds(rest_server, warehouse):
    api = rest_server.mount(pagination="offset", auth=BEARER)
    cfg = config(rest_server, api, auth=BEARER)
    source_cfg = SourceConfig.model_validate(
        {
            "connector": "rest",
            "config": cfg,
            "schema": "raw_ads",
            "streams": {
                "campaigns": {
                    "sync": "full_refresh_overwrite",
                    "deletes": "soft",
                    "delete_detection": "snapshot",
                },
                "spend": {"sync": "incremental_append"},
            },
        }
    )
    source = load_source("rest", "ads", source_cfg.config)
    catalog = source.discover()

    def sync(stream: str, run: str) -> None:
        plan = plan_stream("ads", source_cfg, catalog, stream)
        sync_stream(warehouse, source, plan, RunContext("p", "eu", run), policy=EVERY_CHECKPOINT)

    def table(stream: str, order: str) -> list[dict]:
        columns = ", ".join(f'"{c}"' for c in catalog.stream(stream).schema.names)
        extra = ', "label"' if stream == "campaigns" else ""
        result = warehouse.query(f"SELECT {columns}{extra} FROM raw_ads.{stream} ORDER BY {order}")
        return [{k: v for k, v in r.items() if v is not None} for r in result.to_pylist()]

    sync("campaigns", "r1")
    sync("spend", "r1")
    api.spend_days = 45
    sync("spend", "r2")
    assert table("campaigns", "id") == as_loaded(api.expected("campaigns"))
    assert table("spend", "date, campaign_id") == api.expected("spend")
    assert len(api.expected("spend")) == 225
