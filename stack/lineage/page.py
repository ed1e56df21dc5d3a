"""The lineage page: the graph laid out in columns and drawn, as one self-contained HTML file.

:func:`write_lineage_page` reads ``stack.yml``, the dbt manifest and run results and the
ledger's latest rows, builds the graph (:func:`stack.lineage.graph.lineage_graph`) and
writes the page. :func:`render_page` draws a graph as inline SVG (no CDN, no external
file), with a small script that highlights a node's upstream and downstream chain on
hover, and embeds the graph as JSON in ``<script type="application/json" id="lineage">``
for machines; :func:`render_svg` draws the bare SVG.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stack.lineage.events import load_manifest, read_pipeline
from stack.lineage.graph import Dashboard, Graph, LatestRun, Node, lineage_graph

_COLOURS = {  # status -> (bar, card tint)
    "ok": ("#1f9d63", "#ecf8f2"),
    "warn": ("#e09b00", "#fff6df"),
    "error": ("#d93f36", "#fdeceb"),
    "running": ("#3b7ddd", "#e9f1fd"),
    "unknown": ("#a3abb7", "#f2f4f7"),
}
_WORDS = {"ok": "ok", "warn": "warning", "error": "failed", "running": "running", "unknown": "—"}

NODE_W, NODE_H, COL_GAP, ROW_GAP, PAD, TOP = 204, 50, 66, 14, 28, 64


def write_lineage_page(
    path: str | Path,
    config: Any,
    manifest_path: str | Path | None = None,
    ledger_rows: Iterable[LatestRun] = (),
    bi_hooks: Sequence[Any] = (),
    *,
    run_results_path: str | Path | None = None,
    target: str | None = None,
    now: datetime | None = None,
) -> Path:
    """Write the lineage page: source -> stream -> raw table -> dbt models -> dashboards.

    Args:
        path: the HTML file to write (its folder is created); a ``.svg`` path gets
            the bare SVG drawing instead.
        config: the ``StackConfig`` (or the dict of a ``stack.yml``).
        manifest_path: dbt's manifest (default: ``<dbt project>/target/manifest.json``);
            without one the page stops at the raw tables.
        ledger_rows: the latest run per stream and region, with its table's rows and
            freshness (``stack.run.status.stream_status()``).
        bi_hooks: dashboards: names, :class:`Dashboard`s, ``bi:`` entries (models or dicts,
            shown by ``name`` or ``type``). dbt exposures are added.
        run_results_path: dbt's ``run_results.json`` (default: beside the manifest).
        now: naive UTC, for freshness (default: now).

    Returns:
        ``path``.
    """
    pipeline = read_pipeline(config, target)
    manifest_file = Path(manifest_path) if manifest_path else pipeline.manifest
    results_file = Path(run_results_path) if run_results_path else None
    if results_file is None and manifest_file is not None:
        results_file = manifest_file.parent / "run_results.json"
    run_results = (
        json.loads(results_file.read_text()) if results_file and results_file.exists() else {}
    )
    graph = lineage_graph(
        pipeline.name,
        pipeline.sources,
        load_manifest(manifest_file),
        ledger_rows,
        run_results,
        [_dashboard(hook) for hook in bi_hooks],
        now,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render_svg(graph) if out.suffix.lower() == ".svg" else render_page(graph)
    out.write_text(text, encoding="utf-8")
    return out


def _dashboard(hook: Any) -> Dashboard | str:
    """A dashboard from a name, a ``Dashboard``, or a ``bi:`` entry (model or dict)."""
    if isinstance(hook, Dashboard | str):
        return hook
    data = hook.model_dump() if isinstance(hook, BaseModel) else dict(hook)
    kind = str(data.get("type") or "")
    return Dashboard(str(data.get("name") or kind or "dashboard"), kind)


# -- layout -----------------------------------------------------------------------------------


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


# -- rendering --------------------------------------------------------------------------------


def render_svg(graph: Graph) -> str:
    """The graph as a standalone SVG document (well-formed XML); lays it out first."""
    _layout(graph)
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
    svg = render_svg(graph)  # lays the graph out: the JSON below carries the positions
    data = json.dumps(graph.as_json(), default=str).replace("</", "<\\/")
    return _PAGE.format(
        title=_e(graph.title),
        when=f"{graph.generated_at:%Y-%m-%d %H:%M} UTC",
        summary=_e(summary),
        health=health,
        legend=legend,
        svg=svg,
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
