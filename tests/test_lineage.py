"""Lineage: OpenLineage events of a real demo run (file and HTTP transports), and the
lineage page of that run, parsed and screenshotted in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import threading
import uuid
import xml.etree.ElementTree as ET
import zlib
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml

from stack.config import load_config
from stack.config.checks import Check
from stack.config.lineage import LineageConfig
from stack.lineage import (
    Dashboard,
    emit_events,
    emit_run,
    lineage_graph,
    run_events,
    write_lineage_page,
)
from stack.load.ledger import RunEntry, ledger_source_count
from stack.run import pipeline
from stack.run.status import StreamStatus, stream_status
from stack.run.summary import RunSummary
from stack.transform import DbtRun, NodeResult
from stack.transform.checks import run_checks
from stack.transform.result import TransformResult
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import ROOT, dbt_target
from tests.test_pipeline import write_config

STREAMS = ("customers", "orders", "order_items", "products", "marketing_spend")
NOW = datetime(2026, 3, 2, 12, 0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One real demo run (eu): simulator -> DuckLake -> dbt in an audit clone -> publish.

    The dbt project is copied, so its manifest and run results are this run's own.
    """
    folder = tmp_path_factory.mktemp("demo")
    project = folder / "dbt_project"
    shutil.copytree(
        ROOT / "dbt_project",
        project,
        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"),
    )
    path = write_config(folder)
    config = yaml.safe_load(path.read_text())
    config["dbt"]["project_dir"] = str(project)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    summary = pipeline.run_pipeline(path, None, pipeline.select(load_config(path), "eu"))
    assert summary.ok, summary.failure()
    return {
        "path": path,
        "config": {**config, "path": str(path)},
        "summary": summary,
        "manifest": dbt_target(project) / "manifest.json",
        "ledger": stream_status(path, None),
        "warehouse": folder / "warehouse",
    }


# -- events ----------------------------------------------------------------------------------


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_valid_openlineage(event: dict) -> None:
    """The fields the OpenLineage 2-0-2 RunEvent schema requires, and their formats."""
    assert event["eventType"] in {"START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"}
    when = datetime.fromisoformat(event["eventTime"])
    assert when.tzinfo is not None
    assert event["producer"].startswith("https://")
    assert event["schemaURL"].startswith("https://openlineage.io/spec/")
    uuid.UUID(event["run"]["runId"])
    assert event["job"]["namespace"] and event["job"]["name"]
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        assert dataset["namespace"] and dataset["name"]
    facets = [
        *event["run"].get("facets", {}).values(),
        *event["job"].get("facets", {}).values(),
        *(f for d in event.get("inputs", []) + event.get("outputs", []) for f in _facets(d)),
    ]
    for facet in facets:
        assert facet["_producer"] and facet["_schemaURL"].startswith("https://openlineage.io/")


def _facets(dataset: dict) -> list[dict]:
    return [
        *dataset.get("facets", {}).values(),
        *dataset.get("inputFacets", {}).values(),
        *dataset.get("outputFacets", {}).values(),
    ]


@pytest.mark.slow  # the demo run: simulator -> DuckLake -> dbt
def test_file_transport_writes_openlineage_events_for_every_stream_and_model(demo, tmp_path):
    summary, manifest = demo["summary"], json.loads(demo["manifest"].read_text())
    out = tmp_path / "ol" / "lineage.jsonl"
    config = {**demo["config"], "lineage": {"transport": "file", "path": str(out)}}
    with DuckDBWarehouse(demo["warehouse"], read_only=True) as wh:
        sent = emit_run(config, summary, columns=wh.columns, manifest_path=demo["manifest"])
    events = read_events(out)
    assert sent == len(events) > 0
    for event in events:
        assert_valid_openlineage(event)
    jobs: dict[str, list[dict]] = {}
    for event in events:
        jobs.setdefault(event["job"]["name"], []).append(event)

    # The pipeline run is the parent of every other run, START first and COMPLETE last.
    assert [e["eventType"] for e in (events[0], events[-1])] == ["START", "COMPLETE"]
    parent_id = events[0]["run"]["runId"]
    assert {e["job"]["name"] for e in (events[0], events[-1])} == {"pipeline"}

    for stream in STREAMS:
        start, done = jobs[f"sync.shop.{stream}"]
        assert (start["eventType"], done["eventType"]) == ("START", "COMPLETE")
        assert start["run"]["runId"] == done["run"]["runId"] != parent_id
        assert done["run"]["facets"]["parent"]["run"]["runId"] == parent_id
        tags = {t["key"]: t["value"] for t in done["run"]["facets"]["tags"]["tags"]}
        assert (tags["region"], tags["mdstack_run_id"]) == ("eu", summary.run_id)
        entry = next(s for s in summary.streams if s.stream == stream)
        (source,) = done["inputs"]
        assert (source["namespace"], source["name"]) == ("demo://shop", stream)
        assert source["inputFacets"]["inputStatistics"]["rowCount"] == entry.rows_read
        (table,) = done["outputs"]
        assert table["namespace"] == f"duckdb://{demo['warehouse'].resolve()}"
        assert table["name"] == f"lake.raw_shop.{stream}"
        fields = {f["name"]: f["type"] for f in table["facets"]["schema"]["fields"]}
        assert {"_mds_region", "_mds_loaded_at"} <= set(fields)
        assert fields["_mds_loaded_at"].startswith("TIMESTAMP")
        written = entry.inserted + entry.updated
        assert table["outputFacets"]["outputStatistics"]["rowCount"] == written
        assert "outputStatistics" not in start["outputs"][0].get("outputFacets", {})

    built = {n.unique_id for n in summary.dbt.run.nodes if n.resource_type == "model"}
    assert built
    sync_outputs = {f"lake.raw_shop.{s}" for s in STREAMS}
    for unique_id in built:
        start, done = jobs[f"dbt.{unique_id.split('.', 1)[1]}"]
        assert done["eventType"] == "COMPLETE"
        assert done["job"]["facets"]["jobType"]["integration"] == "DBT"
        node = manifest["nodes"][unique_id]
        (output,) = done["outputs"]
        assert output["name"] == f"lake.{node['schema']}.{node['alias']}"
        assert output["namespace"] == table["namespace"]
        inputs = {i["name"] for i in done["inputs"]}
        assert len(inputs) == len(node["depends_on"]["nodes"])
        if node["name"].startswith("stg_"):  # a staging model reads what a sync wrote
            assert inputs <= sync_outputs
    # Emitting the same run again gives the same run ids (idempotent for Marquez).
    again = run_events(config, summary, manifest=manifest)
    assert [e.run.runId for e in again] == [e["run"]["runId"] for e in events]


FAILED_RUN = yaml.safe_load("""
config:
  name: shop
  target: prod
  targets: {prod: {type: snowflake, account: AB123, user: u, database: ANALYTICS}}
  sources: {crm: {connector: postgres, schema: raw_crm, streams: {accounts: {}}}}
manifest:
  sources:
    source.p.crm.accounts: {resource_type: source, name: accounts, identifier: accounts,
                            database: ANALYTICS, schema: raw_crm}
  nodes:
    model.p.stg: {resource_type: model, name: stg, database: ANALYTICS, schema: staging,
                  alias: stg, columns: {}, depends_on: {nodes: [source.p.crm.accounts]}}
    model.p.mart: {resource_type: model, name: mart, database: ANALYTICS, schema: marts,
                   alias: mart, columns: {id: {data_type: int}},
                   depends_on: {nodes: [model.p.stg]}}
""")


def test_failures_become_fail_and_abort_events_with_the_error():
    config, manifest = FAILED_RUN["config"], FAILED_RUN["manifest"]
    stream = RunEntry(
        "abc", "shop", "crm", "accounts", "us", "incremental_append", "failed",
        datetime(2026, 3, 2, 12), finished_at=datetime(2026, 3, 2, 12, 0, 3),
        error="connection refused",
    )  # fmt: skip
    nodes = (
        NodeResult("model.p.stg", "stg", "model", "error", 1.5, None, "syntax error", None),
        NodeResult("model.p.mart", "mart", "model", "skipped", 0.0, None, None, None),
        NodeResult("test.p.x", "x", "test", "fail", 0.0, None, None, None),
    )
    summary = RunSummary("abc", "us", [stream], TransformResult(DbtRun(("build",), False, nodes)))
    events = [json.loads(_json(e)) for e in run_events(config, summary, manifest=manifest)]
    by = {(e["job"]["name"], e["eventType"]): e for e in events}
    assert [(e["job"]["name"], e["eventType"]) for e in events] == [
        ("pipeline", "START"),
        ("sync.crm.accounts", "START"),
        ("sync.crm.accounts", "FAIL"),
        ("dbt.p.stg", "START"),
        ("dbt.p.stg", "FAIL"),
        ("dbt.p.mart", "START"),
        ("dbt.p.mart", "ABORT"),
        ("pipeline", "FAIL"),
    ]
    failed = by[("sync.crm.accounts", "FAIL")]
    assert failed["run"]["facets"]["errorMessage"]["message"] == "connection refused"
    assert failed["outputs"][0]["namespace"] == "snowflake://ab123"
    assert failed["outputs"][0]["name"] == "ANALYTICS.raw_crm.accounts"
    assert by[("dbt.p.stg", "FAIL")]["run"]["facets"]["errorMessage"]["message"] == "syntax error"
    assert by[("dbt.p.stg", "START")]["inputs"][0]["name"] == "ANALYTICS.raw_crm.accounts"
    mart = by[("dbt.p.mart", "ABORT")]["outputs"][0]["facets"]["schema"]["fields"]
    assert [(f["name"], f["type"]) for f in mart] == [("id", "int")]
    times = [datetime.fromisoformat(e["eventTime"]) for e in events]
    assert times == sorted(times)


def _json(event) -> str:
    from openlineage.client.serde import Serde

    return Serde.to_json(event)


class _Marquez(BaseHTTPRequestHandler):
    """Records what a Marquez ``/api/v1/lineage`` endpoint receives."""

    received: ClassVar[list[tuple[str, str | None, dict]]] = []
    status = 201

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, self.headers.get("Authorization"), json.loads(body)))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_http_transport_posts_to_a_marquez_endpoint_and_never_fails_the_run(monkeypatch, caplog):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Marquez)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        config = {"name": "shop", "sources": {}}
        summary = RunSummary("r1", "eu")
        events = run_events(config, summary, manifest={}, now=NOW)
        monkeypatch.setenv("OL_KEY", "s3cret-key")
        lineage = LineageConfig(transport="http", url=url, api_key="${env:OL_KEY}", timeout=5)

        def resolve(value, where):
            assert where == "lineage.api_key"
            return os.environ[value[6:-1]]

        assert emit_events(lineage, events, resolve=resolve) == 2
        paths = [(p, auth, e["eventType"]) for p, auth, e in _Marquez.received]
        assert paths == [
            ("/api/v1/lineage", "Bearer s3cret-key", "START"),
            ("/api/v1/lineage", "Bearer s3cret-key", "COMPLETE"),
        ]
        _Marquez.status = 400  # refused: reported, not raised
        assert emit_events(lineage, events, resolve=resolve) == 0
        assert "could not send event 1 of 2" in caplog.text
        assert "s3cret-key" not in repr(lineage)
    finally:
        server.shutdown()
        _Marquez.status = 201
    with pytest.raises(ValueError, match="needs `url:`"):
        LineageConfig(transport="http")


@pytest.mark.slow  # the demo run: simulator -> DuckLake -> dbt
def test_checks_on_the_demo_run_reconcile_with_the_run_ledger(demo):
    """Checks on the demo's warehouse: the ledger's counts match every table exactly."""
    declared = [Check.model_validate({"stream": f"shop.{s}", "reconcile": {}}) for s in STREAMS]
    declared.append(
        Check.model_validate(
            {"table": "marts.marketing_roi", "region_column": "region",
             "values": {"column": "roi", "between": [-1, 100]}}
        )
    )  # fmt: skip
    with DuckDBWarehouse(demo["warehouse"]) as wh:
        results = run_checks(
            wh, declared, "eu", demo["summary"].run_id, NOW,
            source_count=ledger_source_count(wh, "shop"), schemas={"shop": "raw_shop"},
        )  # fmt: skip
    assert [(r.name, r.passed, r.skipped) for r in results] == [
        (c.label, True, False) for c in declared
    ], [r.message for r in results]


# -- the page --------------------------------------------------------------------------------


def page_parts(html: str) -> tuple[dict, ET.Element]:
    start = html.index('<script type="application/json" id="lineage">')
    data = json.loads(html[html.index(">", start) + 1 : html.index("</script>", start)])
    svg = ET.fromstring(html[html.index("<svg") : html.index("</svg>") + len("</svg>")])
    return data, svg


SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def demo_page(demo, tmp_path_factory):
    hooks = ["Revenue (Metabase)", Dashboard("Marketing ROI", "tableau", ("marketing_roi",))]
    path = tmp_path_factory.mktemp("page") / "lineage.html"
    assert write_lineage_page(path, demo["config"], demo["manifest"], demo["ledger"], hooks) == path
    return path


@pytest.mark.slow  # the demo run: simulator -> DuckLake -> dbt
def test_page_shows_every_stream_table_model_and_dashboard_with_edges(demo, demo_page):
    data, svg = page_parts(demo_page.read_text())
    manifest = json.loads(demo["manifest"].read_text())
    nodes = {n["id"]: n for n in data["nodes"]}
    edges = {(e["from"], e["to"]) for e in data["edges"]}
    models = {
        k: v for k, v in manifest["nodes"].items() if v["resource_type"] in ("model", "snapshot")
    }
    assert data["columns"] == ["Sources", "Streams", "Raw tables", "Staging", "Marts", "Dashboards"]
    expected = {"source:shop", "dashboard:Revenue (Metabase)", "dashboard:Marketing ROI"}
    expected |= {f"stream:shop.{s}" for s in STREAMS} | {f"table:raw_shop.{s}" for s in STREAMS}
    assert set(nodes) == expected | set(models)
    for stream in STREAMS:
        assert ("source:shop", f"stream:shop.{stream}") in edges
        assert (f"stream:shop.{stream}", f"table:raw_shop.{stream}") in edges
    for uid, model in models.items():
        for up in model["depends_on"]["nodes"]:
            parent = f"table:raw_shop.{up.rsplit('.', 1)[1]}" if up.startswith("source.") else up
            assert (parent, uid) in edges
    assert ("model.mdstack.marketing_roi", "dashboard:Marketing ROI") in edges
    marts = {e[0] for e in edges if e[1] == "dashboard:Revenue (Metabase)"}
    assert marts == {f"model.mdstack.{m}" for m in ("daily_revenue", "marketing_roi", "fct_orders")}
    # Everything just ran green: streams succeeded, tables fresh, models built.
    assert {nodes[f"stream:shop.{s}"]["status"] for s in STREAMS} == {"ok"}
    assert {nodes[f"table:raw_shop.{s}"]["status"] for s in STREAMS} == {"ok"}
    built = {n.unique_id for n in demo["summary"].dbt.run.nodes}
    assert {nodes[uid]["status"] for uid in models if uid in built} == {"ok"}
    assert nodes["dashboard:Marketing ROI"]["status"] == "unknown"
    # Columns run left to right, and every edge points right.
    for a, b in edges:
        assert nodes[a]["column"] < nodes[b]["column"] and nodes[a]["x"] < nodes[b]["x"]
    # The SVG draws the same graph: one group per node, one path per edge, coloured by status.
    drawn = {g.get("data-id"): g for g in svg.iter(f"{SVG}g") if g.get("class") == "node"}
    assert set(drawn) == set(nodes)
    paths = {(p.get("data-from"), p.get("data-to")) for p in svg.iter(f"{SVG}path")}
    assert paths == edges
    assert all(drawn[i].get("data-status") == n["status"] for i, n in nodes.items())
    labels = {t.text for g in drawn.values() for t in g.iter(f"{SVG}text")}
    assert {"orders", "raw_shop.orders", "stg_orders", "marketing_roi", "Marketing ROI"} <= labels
    page = demo_page.read_text()  # self-contained: no CDN, no external file
    assert not re.search(r"""(src|href)=["']?(https?:|//)|<link|@import""", page)


STALE = yaml.safe_load("""
sources:
  shop: {connector: demo, schema: raw_shop,
         streams: {orders: {sync: incremental_deduped}, products: {}, spend: {}}}
manifest:
  sources:
    source.p.shop.orders: &source
      {resource_type: source, name: orders, identifier: orders, schema: raw_shop,
       freshness: {warn_after: {count: 26, period: hour}, error_after: {count: 48, period: hour}}}
    source.p.shop.products: {<<: *source, name: products, identifier: products}
  nodes:
    model.p.stg_orders: {resource_type: model, name: stg_orders, schema: s,
                         fqn: [p, staging, stg_orders],
                         depends_on: {nodes: [source.p.shop.orders]}}
    model.p.revenue: {resource_type: model, name: revenue, schema: m, fqn: [p, marts, revenue],
                      depends_on: {nodes: [model.p.stg_orders]}}
    test.p.revenue_positive: {resource_type: test, name: revenue_positive,
                              depends_on: {nodes: [model.p.revenue]}}
run_results:
  results:
    - {unique_id: model.p.stg_orders, status: success,
       timing: [{completed_at: "2026-03-02T11:00:00Z"}]}
    - {unique_id: model.p.revenue, status: success}
    - {unique_id: test.p.revenue_positive, status: fail}
""")


def test_page_colours_failures_and_stale_tables():
    def latest(stream: str, region: str, status: str, hours: int, **more) -> StreamStatus:
        ended = NOW - timedelta(hours=hours)
        return StreamStatus(
            "r1", "shop", "shop", stream, region, "incremental_append", status, ended,
            finished_at=ended, **more,
        )  # fmt: skip

    ledger_rows = [
        latest("orders", "eu", "succeeded", 30, rows=10, rows_read=10),
        latest("orders", "us", "failed", 1, error="HTTP 500"),
        latest("products", "eu", "succeeded", 50, last_loaded_at=NOW - timedelta(hours=50)),
    ]
    sources, manifest, run_results = (STALE[k] for k in ("sources", "manifest", "run_results"))
    graph = lineage_graph("shop", sources, manifest, ledger_rows, run_results, ["BI"], NOW)
    status = {n.id: n.status for n in graph.nodes}
    assert status["stream:shop.orders"] == "error"  # failed in us
    assert status["source:shop"] == "error"
    assert status["table:raw_shop.orders"] == "warn"  # us never loaded; eu 30h old
    assert status["table:raw_shop.products"] == "error"  # 50h > error_after 48h
    assert status["stream:shop.spend"] == "unknown" and status["table:raw_shop.spend"] == "unknown"
    assert status["model.p.stg_orders"] == "ok"
    assert status["model.p.revenue"] == "error"  # its test failed
    assert graph.columns == ["Sources", "Streams", "Raw tables", "Staging", "Marts", "Dashboards"]
    tip = next(n.tip for n in graph.nodes if n.id == "stream:shop.orders")
    assert "us: failed, 0 rows read — HTTP 500" in tip
    assert ("model.p.revenue", "dashboard:BI") in graph.edges


def png_pixels(data: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced PNG (what Chromium writes) into rows of bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and interlace == 0
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw, stride = zlib.decompress(b"".join(chunks)), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return np.frombuffer(b"".join(rows), np.uint8).reshape(height, width, bpp)[..., :3]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run", "--no-default-browser-check",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
        "--disable-dev-shm-usage", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


@pytest.mark.slow  # the demo run: simulator -> DuckLake -> dbt
def test_page_screenshot_in_headless_chromium_is_not_blank(demo_page, tmp_path):
    shot = tmp_path / "lineage.png"
    uri = demo_page.resolve().as_uri()
    done = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,900", uri)
    assert shot.exists(), done.stderr[-2000:]
    pixels = png_pixels(shot.read_bytes())
    assert pixels.shape[:2] == (900, 1400)
    assert pixels.astype(float).std() > 10  # not one flat colour
    # The green of succeeded nodes (#1f9d63) and dark label text are on screen.
    green = (np.abs(pixels.astype(int) - [0x1F, 0x9D, 0x63]).sum(axis=2) < 40).sum()
    assert green > 500, green
    dark_text = (pixels.sum(axis=2) < 200).sum()
    assert dark_text > 500, dark_text
    # The script runs: a link to a node pins its chain, upstream and downstream.
    done = chromium(
        tmp_path, "--dump-dom", "--virtual-time-budget=3000", f"{uri}#model.mdstack.stg_orders"
    )
    dom = ET.fromstring(done.stdout[done.stdout.index("<svg") : done.stdout.index("</svg>") + 6])
    assert "focus" in dom.get("class", "").split()
    lit = {g.get("data-id") for g in dom.iter(f"{SVG}g") if "on" in (g.get("class") or "").split()}
    assert {"table:raw_shop.orders", "stream:shop.orders", "source:shop"} <= lit
    assert {"model.mdstack.daily_revenue", "dashboard:Marketing ROI"} <= lit
    assert "table:raw_shop.products" not in lit and "model.mdstack.stg_products" not in lit
