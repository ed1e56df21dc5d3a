"""The lineage graph of a pipeline, with a status on every node; drawing it is :mod:`.page`.

:func:`lineage_graph` builds the graph source -> stream -> raw table -> dbt models (one
column per depth: staging, then marts) -> dashboards from ``stack.yml``'s sources, the dbt
manifest, the run ledger and dbt's ``run_results.json``; every node gets a status (``ok``,
``warn``, ``error``, ``running``, ``unknown``) from the last run and the tables' freshness.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

Status = Literal["ok", "warn", "error", "running", "unknown"]
_RANK = {"unknown": 0, "ok": 1, "running": 2, "warn": 3, "error": 4}
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


class LatestRun(Protocol):
    """What the graph reads of a stream's latest run in one region
    (``stack.run.status.StreamStatus`` has it)."""

    @property
    def source(self) -> str: ...

    @property
    def stream(self) -> str: ...

    @property
    def region(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def started_at(self) -> datetime: ...

    @property
    def finished_at(self) -> datetime | None: ...

    @property
    def rows_read(self) -> int: ...

    @property
    def error(self) -> str | None: ...

    @property
    def rows(self) -> int | None: ...

    @property
    def last_loaded_at(self) -> datetime | None: ...


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


# -- building the graph -----------------------------------------------------------------------


def lineage_graph(
    title: str,
    sources: Mapping[str, Mapping[str, Any]],
    manifest: Mapping[str, Any],
    ledger_rows: Iterable[LatestRun],
    run_results: Mapping[str, Any] | None = None,
    dashboards: Sequence[Dashboard | str] = (),
    now: datetime | None = None,
) -> Graph:
    """The lineage graph with statuses (``Node.x``/``Node.y`` are set when it is drawn).

    Args:
        title: the pipeline's name.
        sources: ``sources:`` of ``stack.yml`` as dicts (``connector``, ``schema``, ``streams``).
        manifest: dbt's ``manifest.json``.
        ledger_rows: the latest run per (source, stream, region), with the rows and
            freshness of its table (``stack.run.status.stream_status()``).
        run_results: dbt's ``run_results.json`` of the last invocation.
        dashboards: dashboards or BI hook names; dbt exposures are added to them.
        now: naive UTC, for freshness.
    """
    now = now or datetime.now(UTC).replace(tzinfo=None)
    nodes: dict[str, Node] = {}
    edges: list[tuple[str, str]] = []
    by_stream: dict[tuple[str, str], list[LatestRun]] = defaultdict(list)
    for row in ledger_rows:
        by_stream[(row.source, row.stream)].append(row)
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
    return graph


def _stream_node(
    source: str, stream: str, spec: Mapping[str, Any], runs: list[LatestRun], now: datetime
) -> Node:
    mode = str(spec.get("sync") or "").replace("_", " ")
    node = Node(f"stream:{source}.{stream}", "stream", stream, 1, detail=mode)
    if not runs:
        node.tip = "never run"
        return node
    words: dict[str, Status] = {"succeeded": "ok", "failed": "error", "running": "running"}
    node.status = _worst(words.get(r.status, "unknown") for r in runs)
    ended = [r.finished_at or r.started_at for r in runs]
    node.detail = f"{mode} · {_ago(now, max(ended))}"
    node.tip = "\n".join(
        f"{r.region}: {r.status}, {r.rows_read:,} rows read" + (f" — {r.error}" if r.error else "")
        for r in sorted(runs, key=lambda r: r.region)
    )
    return node


def _table_node(
    schema: str,
    stream: str,
    runs: list[LatestRun],
    dbt_source: Mapping[str, Any] | None,
    now: datetime,
) -> Node:
    node = Node(f"table:{schema}.{stream}", "table", f"{schema}.{stream}", 2)
    loads = [r.last_loaded_at or (r.finished_at if r.status == "succeeded" else None) for r in runs]
    loaded = [t for t in loads if t is not None]
    rows = [r.rows for r in runs if r.rows is not None]
    if not runs or len(loaded) < len(loads):
        node.detail, node.tip = "never loaded", "no successful load in some region"
        if loaded:
            node.status = "warn"
        return node
    oldest = min(loaded)  # the stalest region decides
    age = (now - oldest).total_seconds()
    limits = (dbt_source or {}).get("freshness") or {}
    node.status = "ok"
    levels: tuple[tuple[Status, str], ...] = (("warn", "warn_after"), ("error", "error_after"))
    for status, key in levels:
        limit = limits.get(key) or {}
        seconds = _PERIODS.get(str(limit.get("period")), 3600)
        if limit.get("count") and age > limit["count"] * seconds:
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
    words: dict[str, Status] = {
        "succeeded": "ok",
        "failed": "error",
        "timed_out": "error",
        "skipped": "warn",
    }
    for dashboard in wanted:
        node_id = f"dashboard:{dashboard.name}"
        if node_id in nodes:
            continue
        status = words.get(str(dashboard.status), "unknown")
        nodes[node_id] = Node(node_id, "dashboard", dashboard.name, column, status, dashboard.tool)
        reads = [by_name.get(m, m) for m in dashboard.models] or marts
        edges += [(up, node_id) for up in reads if up in nodes]


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


def _worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=lambda s: _RANK[s], default="unknown")


def _ago(now: datetime, then: datetime) -> str:
    seconds = max((now - then).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return "now"
