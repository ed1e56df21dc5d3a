"""The lineage page: a pipeline's graph, laid out in columns, as one self-contained HTML file.

:func:`lineage_graph` builds the graph source -> stream -> raw table -> dbt models (one
column per depth: staging, then marts) -> dashboards from ``stack.yml``'s sources, the dbt
manifest, the run ledger and dbt's ``run_results.json``; every node gets a status (``ok``,
``warn``, ``error``, ``running``, ``unknown``) from the last run and the tables' freshness.
:func:`render_page` draws it as inline SVG (no CDN, no external file), with a small script
that highlights a node's upstream and downstream chain on hover, and embeds the graph as
JSON in ``<script type="application/json" id="lineage">`` for machines.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["ok", "warn", "error", "running", "unknown"]
_RANK = {"unknown": 0, "ok": 1, "running": 2, "warn": 3, "error": 4}
_COLOURS = {  # status -> (bar, card tint)
    "ok": ("#1f9d63", "#ecf8f2"),
    "warn": ("#e09b00", "#fff6df"),
    "error": ("#d93f36", "#fdeceb"),
    "running": ("#3b7ddd", "#e9f1fd"),
    "unknown": ("#a3abb7", "#f2f4f7"),
}
_WORDS = {"ok": "ok", "warn": "warning", "error": "failed", "running": "running", "unknown": "—"}
_DBT_NODES = ("model", "snapshot", "seed")
_DBT_STATUS: dict[str, Status] = {
    "success": "ok",
    "pass": "ok",
    "warn": "warn",
    "skipped": "warn",
    "error": "error",
    "fail": "error",
    "runtime error": "error",
}
_PERIODS = {"minute": 60, "hour": 3600, "day": 86400}

NODE_W, NODE_H, COL_GAP, ROW_GAP, PAD, TOP = 204, 50, 66, 14, 28, 64


@dataclass(frozen=True)
class Dashboard:
    """A dashboard (or BI hook) at the end of the graph.

    ``models``: names or unique ids of the dbt models it reads; empty means every mart (a
    model no other model reads, past the first model column). ``status``: its last refresh,
    if known (``succeeded``, ``failed``, ``timed_out``, ``skipped``).
    """

    name: str
    tool: str = ""
    models: tuple[str, ...] = ()
    status: str | None = None


@dataclass
class Node:
    id: str
    kind: str
    label: str
    column: int
    status: Status = "unknown"
    detail: str = ""
    tip: str = ""
    x: float = 0.0
    y: float = 0.0


@dataclass
class Graph:
    title: str
    columns: list[str]
    nodes: list[Node]
    edges: list[tuple[str, str]]
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "generated_at": self.generated_at.isoformat(),
            "columns": self.columns,
            "nodes": [asdict(n) for n in self.nodes],
            "edges": [{"from": a, "to": b} for a, b in self.edges],
        }


# -- building the graph ----------------------------------------------------------------------


def lineage_graph(
    title: str,
    sources: Mapping[str, Mapping[str, Any]],
    manifest: Mapping[str, Any],
    ledger_rows: Iterable[Mapping[str, Any]],
    run_results: Mapping[str, Any] | None = None,
    dashboards: Sequence[Dashboard | str] = (),
    now: datetime | None = None,
) -> Graph:
    """The lineage graph with statuses, laid out (``Node.x``/``Node.y`` set).

    Args:
        title: the pipeline's name.
        sources: ``sources:`` of ``stack.yml`` as dicts (``connector``, ``schema``, ``streams``).
        manifest: dbt's ``manifest.json``.
        ledger_rows: the latest ``_mds_runs`` row per (source, stream, region), optionally
            with ``rows`` and ``last_loaded_at`` (what ``pipeline.status()`` returns).
        run_results: dbt's ``run_results.json`` of the last invocation.
        dashboards: dashboards or BI hook names; dbt exposures are added to them.
        now: naive UTC, for freshness.
    """
    now = now or datetime.now(UTC).replace(tzinfo=None)
    nodes: dict[str, Node] = {}
    edges: list[tuple[str, str]] = []
    by_stream: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in ledger_rows:
        by_stream[(str(row["source"]), str(row["stream"]))].append(row)
    dbt_sources = {
        (s["schema"], s.get("identifier") or s["name"]): s
        for s in (manifest.get("sources") or {}).values()
    }
    for name, source in sources.items():
        node = nodes[f"source:{name}"] = Node(
            f"source:{name}", "source", name, 0, detail=str(source.get("connector", ""))
        )
        schema = str(source.get("schema") or source.get("schema_") or name)
        statuses = []
        for stream, spec in (source.get("streams") or {}).items():
            runs = by_stream.get((name, stream), [])
            stream_node = _stream_node(name, stream, spec or {}, runs, now)
            table_node = _table_node(schema, stream, runs, dbt_sources.get((schema, stream)), now)
            nodes[stream_node.id] = stream_node
            nodes[table_node.id] = table_node
            edges += [(node.id, stream_node.id), (stream_node.id, table_node.id)]
            statuses.append(stream_node.status)
        node.status = _worst(statuses)
        node.detail = f"{node.detail} · {len(statuses)} streams".strip(" ·")
    for (schema, table), _ in dbt_sources.items():  # dbt sources nothing loads
        node_id = f"table:{schema}.{table}"
        if node_id not in nodes:
            label = f"{schema}.{table}"
            nodes[node_id] = Node(node_id, "table", label, 2, detail="not loaded by mdstack")
    depth = _add_models(nodes, edges, manifest, run_results or {}, now)
    _add_dashboards(nodes, edges, manifest, dashboards, 3 + depth)
    columns = ["Sources", "Streams", "Raw tables"]
    columns += _model_headers(nodes, manifest, depth)
    if any(n.kind == "dashboard" for n in nodes.values()):
        columns.append("Dashboards")
    graph = Graph(title, columns, list(nodes.values()), edges, now.replace(tzinfo=UTC))
    _layout(graph)
    return graph


def _stream_node(
    source: str, stream: str, spec: Mapping[str, Any], runs: list[Mapping[str, Any]], now: datetime
) -> Node:
    mode = str(spec.get("sync") or "").replace("_", " ")
    node = Node(f"stream:{source}.{stream}", "stream", stream, 1, detail=mode)
    if not runs:
        node.tip = "never run"
        return node
    words = {"succeeded": "ok", "failed": "error", "running": "running"}
    node.status = _worst(words.get(str(r.get("status")), "unknown") for r in runs)
    ended = [t for r in runs if (t := r.get("finished_at") or r.get("started_at"))]
    if ended:
        node.detail = f"{mode} · {_ago(now, max(ended))}"
    node.tip = "\n".join(
        f"{r['region']}: {r.get('status')}, {int(r.get('rows_read') or 0):,} rows read"
        + (f" — {r['error']}" if r.get("error") else "")
        for r in sorted(runs, key=lambda r: str(r["region"]))
    )
    return node


def _table_node(
    schema: str,
    stream: str,
    runs: list[Mapping[str, Any]],
    dbt_source: Mapping[str, Any] | None,
    now: datetime,
) -> Node:
    node = Node(f"table:{schema}.{stream}", "table", f"{schema}.{stream}", 2)
    loads = [
        r.get("last_loaded_at")
        or (r.get("finished_at") if r.get("status") == "succeeded" else None)
        for r in runs
    ]
    rows = [r["rows"] for r in runs if r.get("rows") is not None]
    if not runs or not all(loads):
        node.detail, node.tip = "never loaded", "no successful load in some region"
        if any(loads):
            node.status = "warn"
        return node
    oldest = min(loads)  # the stalest region decides
    age = (now - oldest).total_seconds()
    limits = (dbt_source or {}).get("freshness") or {}
    node.status = "ok"
    for status, key in (("warn", "warn_after"), ("error", "error_after")):
        limit = limits.get(key) or {}
        if limit.get("count") and age > limit["count"] * _PERIODS.get(limit.get("period"), 3600):
            node.status = status
    node.detail = (f"{sum(rows):,} rows · " if rows else "") + f"loaded {_ago(now, oldest)}"
    node.tip = f"oldest region load {oldest:%Y-%m-%d %H:%M} UTC" + (
        f"; stale after {limits['warn_after']['count']} {limits['warn_after']['period']}s"
        if (limits.get("warn_after") or {}).get("count")
        else ""
    )
    return node


def _add_models(
    nodes: dict[str, Node],
    edges: list[tuple[str, str]],
    manifest: Mapping[str, Any],
    run_results: Mapping[str, Any],
    now: datetime,
) -> int:
    """Add dbt models, snapshots and seeds; returns how many model columns there are."""
    found = {
        k: v
        for k, v in (manifest.get("nodes") or {}).items()
        if v.get("resource_type") in _DBT_NODES
    }
    results = {r["unique_id"]: r for r in run_results.get("results") or []}
    tests = _test_statuses(manifest, results)
    depth: dict[str, int] = {}

    def level(uid: str) -> int:
        if uid not in depth:
            depth[uid] = 0
            ups = [u for u in found[uid]["depends_on"].get("nodes") or [] if u in found]
            depth[uid] = 1 + max((level(u) for u in ups), default=-1)
        return depth[uid]

    for uid, spec in sorted(found.items()):
        node = nodes[uid] = Node(uid, "model", spec["name"], 3 + level(uid))
        _model_status(node, spec, results.get(uid), tests.get(uid, []), now)
        for up in spec["depends_on"].get("nodes") or []:
            if up in found:
                edges.append((up, uid))
            elif up in (manifest.get("sources") or {}):
                source = manifest["sources"][up]
                table = source.get("identifier") or source["name"]
                edges.append((f"table:{source['schema']}.{table}", uid))
    return 1 + max(depth.values(), default=-1)


def _test_statuses(
    manifest: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]
) -> dict[str, list[tuple[str, Status]]]:
    """model id -> (test name, status) of the tests that ran on it."""
    tested: dict[str, list[tuple[str, Status]]] = defaultdict(list)
    for uid, result in results.items():
        test = (manifest.get("nodes") or {}).get(uid) or {}
        if test.get("resource_type") != "test":
            continue
        status = _DBT_STATUS.get(str(result.get("status")), "unknown")
        for model in (test.get("depends_on") or {}).get("nodes") or []:
            tested[model].append((test["name"], status))
    return tested


def _model_status(
    node: Node,
    spec: Mapping[str, Any],
    result: Mapping[str, Any] | None,
    tests: list[tuple[str, Status]],
    now: datetime,
) -> None:
    materialized = (spec.get("config") or {}).get("materialized") or spec["resource_type"]
    node.detail = materialized
    tips = [f"{spec['schema']}.{spec.get('alias') or spec['name']} ({materialized})"]
    if result is None:
        node.tip = "\n".join([*tips, "not built by the last dbt run"])
        return
    node.status = _DBT_STATUS.get(str(result.get("status")), "unknown")
    tips.append(f"last dbt run: {result.get('status')}")
    if result.get("message") and node.status != "ok":
        tips.append(str(result["message"])[:300])
    bad = [(name, status) for name, status in tests if status in ("warn", "error")]
    node.status = _worst([node.status, *(s for _, s in bad)])
    tips += [f"test {name}: {status}" for name, status in bad]
    done = [t.get("completed_at") for t in result.get("timing") or [] if t.get("completed_at")]
    if done:
        built = datetime.fromisoformat(max(done).replace("Z", "+00:00")).replace(tzinfo=None)
        tips.append(f"built {_ago(now, built)}")
    if tests:
        node.detail += f" · {len(tests) - len(bad)}/{len(tests)} tests pass"
    elif done:
        node.detail += f" · built {_ago(now, built)}"
    node.tip = "\n".join(tips)


def _add_dashboards(
    nodes: dict[str, Node],
    edges: list[tuple[str, str]],
    manifest: Mapping[str, Any],
    dashboards: Sequence[Dashboard | str],
    column: int,
) -> None:
    wanted = [d if isinstance(d, Dashboard) else Dashboard(str(d)) for d in dashboards]
    for exposure in (manifest.get("exposures") or {}).values():
        ups = tuple((exposure.get("depends_on") or {}).get("nodes") or [])
        wanted.append(Dashboard(exposure.get("label") or exposure["name"], exposure["type"], ups))
    models = {n.id: n for n in nodes.values() if n.kind == "model"}
    by_name = {n.label: n.id for n in models.values()}
    readers = {a for a, b in edges if b in models}
    leaves = [n for i, n in models.items() if i not in readers and i.startswith("model.")]
    marts = [n.id for n in leaves if n.column > 3] or [n.id for n in leaves]
    if not models:
        marts = [n.id for n in nodes.values() if n.kind == "table"]
    words = {"succeeded": "ok", "failed": "error", "timed_out": "error", "skipped": "warn"}
    for dashboard in wanted:
        node_id = f"dashboard:{dashboard.name}"
        if node_id in nodes:
            continue
        status = words.get(str(dashboard.status), "unknown")
        nodes[node_id] = Node(node_id, "dashboard", dashboard.name, column, status, dashboard.tool)
        ups = [by_name.get(m, m) for m in dashboard.models] or marts
        edges += [(up, node_id) for up in ups if up in nodes]


def _model_headers(nodes: dict[str, Node], manifest: Mapping[str, Any], depth: int) -> list[str]:
    """A header per model column: the folder most of its models live in (staging, marts)."""
    headers = []
    for level in range(depth):
        folders: Counter[str] = Counter()
        for node in nodes.values():
            if node.kind == "model" and node.column == 3 + level:
                spec = manifest["nodes"][node.id]
                fqn = spec.get("fqn") or []
                folders[fqn[1] if len(fqn) > 2 else f"{spec['resource_type']}s"] += 1
        headers.append(folders.most_common(1)[0][0].capitalize() if folders else "Models")
    return headers


def _worst(statuses: Iterable[str]) -> Status:
    return max(statuses, key=lambda s: _RANK[s], default="unknown")  # type: ignore[return-value]


def _ago(now: datetime, then: datetime) -> str:
    seconds = max((now - then).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return "now"


# -- layout ----------------------------------------------------------------------------------


def _layout(graph: Graph) -> None:
    """Columns left to right; rows ordered to keep edges short (barycentre sweeps)."""
    columns: dict[int, list[Node]] = defaultdict(list)
    for node in graph.nodes:
        columns[node.column].append(node)
    ups: dict[str, list[str]] = defaultdict(list)
    downs: dict[str, list[str]] = defaultdict(list)
    for a, b in graph.edges:
        downs[a].append(b)
        ups[b].append(a)
    order = {n.id: i for i, n in enumerate(graph.nodes)}
    for sweep in range(4):
        forward = sweep % 2 == 0
        for col in sorted(columns, reverse=not forward):
            links = ups if forward else downs

            def centre(node: Node, links: dict[str, list[str]] = links) -> float:
                near = [order[m] for m in links[node.id] if m in order]
                return sum(near) / len(near) if near else order[node.id]

            columns[col].sort(key=centre)
            for i, node in enumerate(columns[col]):
                order[node.id] = i
    tallest = max((len(c) for c in columns.values()), default=1)
    height = tallest * (NODE_H + ROW_GAP)
    for col, members in columns.items():
        top = TOP + (height - len(members) * (NODE_H + ROW_GAP)) / 2
        for i, node in enumerate(members):
            node.x = PAD + col * (NODE_W + COL_GAP)
            node.y = top + i * (NODE_H + ROW_GAP)


# -- rendering -------------------------------------------------------------------------------


def render_svg(graph: Graph) -> str:
    """The graph as a standalone SVG document (well-formed XML)."""
    width = PAD * 2 + len(graph.columns) * (NODE_W + COL_GAP) - COL_GAP
    height = max((n.y for n in graph.nodes), default=TOP) + NODE_H + PAD
    where = {n.id: n for n in graph.nodes}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" role="img" font-family="{_FONT}" '
        f'aria-label="lineage of {_e(graph.title)}">'
    ]
    for i, header in enumerate(graph.columns):
        x = PAD + i * (NODE_W + COL_GAP)
        parts.append(
            f'<text class="header" x="{x + 2}" y="{TOP - 22}" font-size="12" font-weight="600" '
            f'fill="#6b7280" letter-spacing="0.06em">{_e(header.upper())}</text>'
        )
    parts.append('<g class="edges">')
    for a, b in graph.edges:
        if a not in where or b not in where:
            continue
        s, t = where[a], where[b]
        x1, y1, x2, y2 = s.x + NODE_W, s.y + NODE_H / 2, t.x, t.y + NODE_H / 2
        bend = max((x2 - x1) / 2, 30)
        # Red from a failure downstream; a source's own status sums up its streams'.
        broken = s.status == "error" and (s.kind != "source" or t.status == "error")
        colour = "#e4a19c" if broken else "#c3cad4"
        parts.append(
            f'<path class="edge" data-from="{_e(a)}" data-to="{_e(b)}" fill="none" '
            f'stroke="{colour}" stroke-width="1.6" d="M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},'
            f'{y1:.1f} {x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"/>'
        )
    parts.append('</g><g class="nodes">')
    for n in graph.nodes:
        bar, tint = _COLOURS[n.status]
        tip = "\n".join(filter(None, [n.label, _WORDS[n.status], n.detail, n.tip]))
        parts.append(
            f'<g class="node" data-id="{_e(n.id)}" data-kind="{n.kind}" data-status="{n.status}" '
            f'transform="translate({n.x:.1f},{n.y:.1f})"><title>{_e(tip)}</title>'
            f'<rect width="{NODE_W}" height="{NODE_H}" rx="8" fill="{tint}" stroke="{bar}" '
            f'stroke-opacity="0.45"/>'
            f'<rect width="6" height="{NODE_H}" rx="3" fill="{bar}"/>'
            f'<circle cx="{NODE_W - 13}" cy="14" r="4.5" fill="{bar}"/>'
            f'<text x="16" y="21" font-size="{13 if len(n.label) <= 22 else 12}" '
            f'font-weight="600" fill="#1f2937">{_e(_fit(n.label, 25))}</text>'
            f'<text x="16" y="38" font-size="11" fill="#5b6472">{_e(_fit(n.detail, 32))}</text>'
            "</g>"
        )
    parts.append("</g></svg>")
    return "".join(parts)


def render_page(graph: Graph) -> str:
    """A self-contained HTML page: header, legend, the SVG, the graph as JSON, a script."""
    counts = Counter(n.kind for n in graph.nodes)
    own = [n for n in graph.nodes if n.kind != "source"]  # a source sums up its streams
    failing = sum(n.status == "error" for n in own)
    stale = sum(n.status == "warn" for n in own)
    summary = " · ".join(
        f"{counts[k]} {k}s"
        for k in ("source", "stream", "table", "model", "dashboard")
        if counts[k]
    )
    legend = "".join(
        f'<span class="chip"><i style="background:{_COLOURS[s][0]}"></i>{w}</span>'
        for s, w in _LEGEND
    )
    health = (
        f'<b class="bad">{failing} failing</b>' if failing else '<b class="good">all green</b>'
    ) + (f' · <b class="warn">{stale} warning</b>' if stale else "")
    data = json.dumps(graph.as_json(), default=str).replace("</", "<\\/")
    return _PAGE.format(
        title=_e(graph.title),
        when=f"{graph.generated_at:%Y-%m-%d %H:%M} UTC",
        summary=_e(summary),
        health=health,
        legend=legend,
        svg=render_svg(graph),
        data=data,
        script=_SCRIPT,
    )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


_LEGEND = (
    ("ok", "ok"),
    ("warn", "stale / warning"),
    ("error", "failed"),
    ("running", "running"),
    ("unknown", "not run"),
)
_FONT = "Inter, 'Segoe UI', 'Helvetica Neue', Arial, sans-serif"
_SCRIPT = """
const data = JSON.parse(document.getElementById('lineage').textContent);
const svg = document.querySelector('svg');
const up = {}, down = {};
for (const e of data.edges) {
  (down[e.from] = down[e.from] || []).push(e.to);
  (up[e.to] = up[e.to] || []).push(e.from);
}
function reach(start, links) {
  const seen = new Set([start]), todo = [start];
  while (todo.length) for (const m of links[todo.pop()] || [])
    if (!seen.has(m)) { seen.add(m); todo.push(m); }
  return seen;
}
let pinned = null;
function focus(id) {
  svg.classList.toggle('focus', !!id);
  const keep = id ? new Set([...reach(id, up), ...reach(id, down)]) : new Set();
  svg.querySelectorAll('.node').forEach(n => n.classList.toggle('on', keep.has(n.dataset.id)));
  svg.querySelectorAll('.edge').forEach(e =>
    e.classList.toggle('on', keep.has(e.dataset.from) && keep.has(e.dataset.to)));
}
svg.querySelectorAll('.node').forEach(n => {
  n.addEventListener('mouseenter', () => pinned || focus(n.dataset.id));
  n.addEventListener('mouseleave', () => pinned || focus(null));
  n.addEventListener('click', () => { pinned = pinned === n.dataset.id ? null : n.dataset.id;
    focus(pinned || n.dataset.id); });
});
const linked = decodeURIComponent(location.hash.slice(1));  // lineage.html#<node id> pins it
if (data.nodes.some(n => n.id === linked)) { pinned = linked; focus(linked); }
"""
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · lineage</title>
<style>
body {{ margin: 0; background: #f5f6f8; color: #1f2937;
  font-family: Inter, 'Segoe UI', 'Helvetica Neue', Arial, sans-serif; }}
header {{ display: flex; align-items: baseline; gap: 18px; flex-wrap: wrap;
  padding: 18px 28px 6px; }}
h1 {{ font-size: 20px; margin: 0; font-weight: 700; }}
h1 small {{ font-size: 14px; font-weight: 500; color: #9ca3af; margin-left: 4px; }}
.meta {{ color: #6b7280; font-size: 13px; }}
.good {{ color: #1f9d63; }} .bad {{ color: #d93f36; }} .warn {{ color: #b77f00; }}
.legend {{ margin-left: auto; display: flex; gap: 14px; font-size: 12px; color: #4b5563; }}
.chip i {{ display: inline-block; width: 10px; height: 10px; border-radius: 3px;
  margin-right: 5px; vertical-align: -1px; }}
main {{ padding: 8px 20px 20px; }}
.card {{ background: #fff; border: 1px solid #e5e7eb; border-radius: 12px; padding: 8px;
  overflow-x: auto; }}
svg {{ display: block; width: 100%; height: auto; max-width: 1800px; margin: 0 auto; }}
.node {{ cursor: pointer; transition: opacity .15s; }}
.edge {{ transition: opacity .15s; }}
svg.focus .node:not(.on) {{ opacity: .18; }}
svg.focus .edge:not(.on) {{ opacity: .07; }}
svg.focus .edge.on {{ stroke: #475569; stroke-width: 2.2; }}
footer {{ color: #9ca3af; font-size: 12px; padding: 0 28px 16px; }}
</style></head>
<body>
<header><h1>{title} <small>lineage</small></h1>
<span class="meta">{summary} · {health} · generated {when}</span>
<span class="legend">{legend}</span></header>
<main><div class="card">{svg}</div></main>
<footer>Hover a node to trace it upstream and downstream; click to pin
(or link to <code>#&lt;node id&gt;</code>).</footer>
<script type="application/json" id="lineage">{data}</script>
<script>{script}</script>
</body></html>
"""
