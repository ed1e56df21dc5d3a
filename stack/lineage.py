"""Lineage: OpenLineage run events for every run, and a page of the graph to look at.

Provides:

- :func:`run_events` builds OpenLineage ``RunEvent``s (START, then COMPLETE, FAIL or ABORT)
  from a run summary (``dataclasses.asdict(RunSummary)``): one job run per stream sync
  (input ``<connector>://<source>`` / ``<stream>``, output the warehouse table with schema
  and row-count facets) and per dbt model or snapshot (inputs and outputs from the dbt
  manifest), each a child of one pipeline run; :func:`emit_run` builds and sends them.
- :func:`write_lineage_page` (from :mod:`stack._lineage_html`) writes a self-contained HTML
  page: source -> stream -> raw table -> dbt models -> dashboards, coloured by the last run.

Event sending never fails a run: a transport error is logged and the count of events
delivered is returned. openlineage-python is imported only when events are built. Where
events go is the ``lineage:`` section of ``stack.yml``
(:class:`stack.config.lineage.LineageConfig`); configs are read as models or plain dicts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from stack._lineage_events import PRODUCER, Columns, build_events
from stack._lineage_html import Dashboard, lineage_graph, render_page, render_svg
from stack.config.lineage import LineageConfig
from stack.errors import ConfigError

__all__ = [
    "PRODUCER",
    "Dashboard",
    "emit_events",
    "emit_run",
    "lineage_graph",
    "render_page",
    "render_svg",
    "run_events",
    "write_lineage_page",
]

log = logging.getLogger(__name__)

DUCKDB_DATABASE = "lake"
"""The name the DuckLake catalog is attached under (dbt's ``database`` for DuckDB)."""


# -- reading a config given as a model or a dict ----------------------------------------------


@dataclass(frozen=True)
class PipelineInfo:
    """What lineage needs from ``stack.yml``."""

    name: str
    root: Path
    sources: dict[str, dict[str, Any]]
    target: dict[str, Any]
    lineage: LineageConfig | None
    manifest: Path | None

    @property
    def namespace(self) -> str:
        return (self.lineage.namespace if self.lineage else None) or self.name

    def site(self) -> tuple[str, str]:
        """(dataset namespace, database) of warehouse tables, per OpenLineage's naming."""
        if self.target.get("type") == "snowflake":
            account = str(self.target.get("account", ""))
            return f"snowflake://{account.lower()}", str(self.target.get("database", ""))
        path = Path(self.target.get("path", "warehouse"))
        folder = (path if path.is_absolute() else self.root / path).resolve()
        return f"duckdb://{folder}", DUCKDB_DATABASE


def read_pipeline(config: Any, target: str | None = None) -> PipelineInfo:
    """Normalise a ``StackConfig`` (or the dict of a ``stack.yml``) for lineage."""
    if isinstance(config, BaseModel):
        data = config.model_dump(by_alias=True)
        root = Path(getattr(config, "path", "stack.yml")).resolve().parent
    else:
        data = dict(config)
        root = Path(data.get("path") or "stack.yml").resolve().parent
    targets = data.get("targets") or {}
    chosen = (target or data.get("target") or "").partition("@")[0]
    lineage = data.get("lineage")
    dbt = data.get("dbt") or {}
    project = Path(dbt.get("project_dir") or "dbt_project") if dbt else None
    if project is not None and not project.is_absolute():
        project = root / project
    return PipelineInfo(
        name=str(data.get("name", "mdstack")),
        root=root,
        sources=dict(data.get("sources") or {}),
        target=dict(targets.get(chosen) or {}),
        lineage=LineageConfig.model_validate(lineage) if lineage else None,
        manifest=_target_dir(project) / "manifest.json" if project else None,
    )


def _target_dir(project: Path) -> Path:
    """Where dbt writes its artifacts: ``$DBT_TARGET_PATH`` (relative to the project, as
    dbt reads it) or the project's ``target/``."""
    return project / os.environ.get("DBT_TARGET_PATH", "target")


def load_manifest(path: Path | None) -> dict[str, Any]:
    """The dbt manifest at ``path``, or an empty one when there is none yet."""
    if path is None or not Path(path).exists():
        return {"nodes": {}, "sources": {}, "exposures": {}}
    return json.loads(Path(path).read_text())


# -- events -----------------------------------------------------------------------------------


def run_events(
    config: Any,
    summary: Mapping[str, Any],
    *,
    target: str | None = None,
    manifest: Mapping[str, Any] | None = None,
    columns: Columns | None = None,
    now: datetime | None = None,
) -> list[Any]:
    """OpenLineage ``RunEvent``s of one pipeline run, in time order.

    Job runs: ``pipeline`` (the parent), ``sync.<source>.<stream>`` per stream and
    ``dbt.<project>.<model>`` per dbt model, snapshot or seed, in the job namespace
    ``lineage.namespace`` (default: the pipeline's name). The region and mdstack's run id
    are tags of every run. Warehouse tables are datasets named ``database.schema.table`` in
    namespace ``duckdb://<warehouse folder>`` or ``snowflake://<account>``, as dbt's are, so
    a sync's output is the input of the models that read it.

    Args:
        config: the ``StackConfig`` (or the dict of a ``stack.yml``).
        summary: a ``RunSummary`` or its ``asdict``: ``run_id``, ``region``, ``streams``
            (ledger entries), ``dbt`` (``{"success", "nodes": [NodeResult dicts]}`` or None).
        target: the ``--target`` the run used (default: the file's ``target:``).
        manifest: the dbt manifest (default: ``<dbt project>/target/manifest.json``).
        columns: column types of warehouse tables, for the schema facets of sync outputs
            (``Warehouse.columns``); dbt outputs take the manifest's declared columns.
        now: when the run ended (naive UTC), for what the summary has no time for.

    Returns:
        ``openlineage.client.event_v2.RunEvent`` objects.
    """
    pipeline = read_pipeline(config, target)
    manifest = manifest if manifest is not None else load_manifest(pipeline.manifest)
    now = now or datetime.now(UTC).replace(tzinfo=None)
    if is_dataclass(summary) and not isinstance(summary, type):
        summary = asdict(summary)
    return build_events(pipeline, summary, manifest, columns, now)


# -- sending ----------------------------------------------------------------------------------


def emit_events(
    lineage: LineageConfig,
    events: Sequence[Any],
    *,
    root: Path = Path(),
    resolve: Callable[[Any, str], Any] | None = None,
) -> int:
    """Send events through the configured transport; returns how many were delivered.

    Never raises for a transport failure (lineage must not fail a run): it logs a warning
    and stops at the first event that could not be sent.

    Args:
        lineage: the ``lineage:`` section.
        events: from :func:`run_events`.
        root: the folder a relative ``path`` is relative to (stack.yml's).
        resolve: :meth:`stack.secrets.Resolver.resolve`, for an ``api_key`` reference.
    """
    from openlineage.client import OpenLineageClient

    client = OpenLineageClient(config={"transport": _transport(lineage, root, resolve)})
    sent = 0
    for event in events:
        try:
            client.emit(event)
        except Exception as exc:  # any transport error: report, never fail the run
            log.warning(
                "lineage: could not send event %d of %d via %s: %s",
                sent + 1,
                len(events),
                lineage.transport,
                f"{type(exc).__name__}: {exc}",
            )
            break
        sent += 1
    client.close(timeout=lineage.timeout)
    return sent


def _transport(
    lineage: LineageConfig, root: Path, resolve: Callable[[Any, str], Any] | None
) -> dict[str, Any]:
    if lineage.transport == "file":
        path = lineage.path if lineage.path.is_absolute() else Path(root) / lineage.path
        path.parent.mkdir(parents=True, exist_ok=True)
        return {"type": "file", "log_file_path": str(path), "append": True}
    settings: dict[str, Any] = {
        "type": "http",
        "url": lineage.url,
        "endpoint": lineage.endpoint,
        "timeout": lineage.timeout,
    }
    if lineage.api_key is not None:
        key: Any = lineage.api_key.get_secret_value()
        if resolve is not None and "${" in key:
            key = resolve(key, "lineage.api_key")
        key = key.get_secret_value() if isinstance(key, SecretStr) else str(key)
        settings["auth"] = {"type": "api_key", "apiKey": key}
    return settings


def emit_run(
    config: Any,
    summary: Mapping[str, Any],
    *,
    target: str | None = None,
    manifest_path: Path | None = None,
    columns: Columns | None = None,
    resolve: Callable[[Any, str], Any] | None = None,
    now: datetime | None = None,
) -> int:
    """Build the run's OpenLineage events and send them to ``config.lineage``.

    Args:
        config: the ``StackConfig`` (or a ``stack.yml`` dict) with a ``lineage:`` section.
        summary: a ``RunSummary`` or its ``asdict``.
        target, columns, now: as for :func:`run_events`.
        manifest_path: the dbt manifest (default: ``<dbt project>/target/manifest.json``).
        resolve: :meth:`stack.secrets.Resolver.resolve`, for an ``api_key`` reference.

    Returns:
        How many events were delivered (0 when none could be sent).

    Raises:
        ConfigError: ``stack.yml`` has no ``lineage:`` section.
    """
    pipeline = read_pipeline(config, target)
    if pipeline.lineage is None:
        raise ConfigError(
            "no `lineage:` section in stack.yml",
            key="lineage",
            hint="add `lineage: {transport: file, path: lineage.jsonl}`",
        )
    manifest = load_manifest(manifest_path or pipeline.manifest)
    events = run_events(config, summary, target=target, manifest=manifest, columns=columns, now=now)
    return emit_events(pipeline.lineage, events, root=pipeline.root, resolve=resolve)


# -- the page ---------------------------------------------------------------------------------


def write_lineage_page(
    path: str | Path,
    config: Any,
    manifest_path: str | Path | None = None,
    ledger_rows: Iterable[Mapping[str, Any]] = (),
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
        ledger_rows: the latest ``_mds_runs`` row per stream and region; ``pipeline.status()``
            rows (which add ``rows`` and ``last_loaded_at``) colour tables by freshness.
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
