"""OpenLineage ``RunEvent``s of one pipeline run, and what lineage reads from ``stack.yml``.

- :class:`PipelineInfo` / :func:`read_pipeline`: the name, sources, target and dbt
  manifest of a ``StackConfig`` (or of the dict of a ``stack.yml``), read once.
- :func:`run_events` builds the events (START, then COMPLETE, FAIL or ABORT) from a run's
  results (:class:`RunResults`, which ``RunSummary`` is): one job run per stream sync (input
  ``<connector>://<source>`` / ``<stream>``, output the warehouse table with schema and
  row-count facets) and per dbt model or snapshot (inputs and outputs from the dbt
  manifest), each a child of one pipeline run.

openlineage-python is imported when a builder is made, not with this module.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from stack.config.lineage import LineageConfig

if TYPE_CHECKING:  # types only: lineage must import light (no warehouse, no engine)
    from openlineage.client.generated.base import InputDatasetFacet, OutputDatasetFacet

    from stack.load.ledger import RunEntry
    from stack.transform.dbt import NodeResult
    from stack.transform.result import TransformResult

PRODUCER = "https://github.com/mdstack/mdstack"
"""The ``producer`` URI of every event and facet mdstack emits."""
_DBT_JOBS = ("model", "snapshot", "seed")
_ENDED = {"succeeded": "COMPLETE", "failed": "FAIL"}
_DBT_ENDED = {"success": "COMPLETE", "pass": "COMPLETE", "skipped": "ABORT"}

Columns = Callable[[str, str], "Mapping[str, str] | None"]
"""``(schema, table) -> column name -> type`` (``Warehouse.columns`` of an open warehouse)."""


DUCKDB_DATABASE = "lake"
"""The name the DuckLake catalog is attached under (dbt's ``database`` for DuckDB)."""


class RunResults(Protocol):
    """What lineage reads of a run (``stack.run.summary.RunSummary`` has it)."""

    @property
    def run_id(self) -> str: ...

    @property
    def region(self) -> str: ...

    @property
    def streams(self) -> Sequence[RunEntry]: ...

    @property
    def dbt(self) -> TransformResult | None: ...


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


# -- building the events ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Dataset:
    """A dataset of an event; ``rows`` goes into the statistics facet of the final event."""

    namespace: str
    name: str
    fields: tuple[tuple[str, str | None], ...] | None = None
    rows: int | None = None


@dataclass(frozen=True)
class _Job:
    name: str
    run_id: str
    job_type: str
    integration: str
    parent: _Job | None = None


class _EventBuilder:
    """Builds openlineage-python ``RunEvent``s for one pipeline run (imported lazily)."""

    def __init__(self, namespace: str, region: str, run_id: str) -> None:
        from openlineage.client import event_v2, facet_v2

        self.ev, self.fc = event_v2, facet_v2
        self.namespace, self.region, self.run_id = namespace, region, run_id

    def job(self, name: str, job_type: str, integration: str, parent: _Job | None = None) -> _Job:
        """A job, with a run id stable for (namespace, region, run, job): START and its end
        share it, and emitting a run twice gives the same ids."""
        key = f"mdstack:{self.namespace}/{self.region}/{self.run_id}/{name}"
        return _Job(name, str(uuid.uuid5(uuid.NAMESPACE_URL, key)), job_type, integration, parent)

    def event(
        self,
        state: str,
        job: _Job,
        when: datetime,
        inputs: Sequence[_Dataset] = (),
        outputs: Sequence[_Dataset] = (),
        error: str | None = None,
    ) -> Any:
        ev, fc = self.ev, self.fc
        final = state != "START"
        run_facets: dict[str, Any] = {
            "tags": fc.tags_run.TagsRunFacet(
                tags=[
                    fc.tags_run.TagsRunFacetFields("region", self.region, "mdstack"),
                    fc.tags_run.TagsRunFacetFields("mdstack_run_id", self.run_id, "mdstack"),
                ],
                producer=PRODUCER,
            )
        }
        if job.parent is not None:
            pr = fc.parent_run
            run_facets["parent"] = pr.ParentRunFacet(
                run=pr.Run(runId=job.parent.run_id),
                job=pr.Job(namespace=self.namespace, name=job.parent.name),
                root=pr.Root(
                    run=pr.RootRun(runId=job.parent.run_id),
                    job=pr.RootJob(namespace=self.namespace, name=job.parent.name),
                ),
                producer=PRODUCER,
            )
        if error:
            run_facets["errorMessage"] = fc.error_message_run.ErrorMessageRunFacet(
                message=str(error)[:4000], programmingLanguage="python", producer=PRODUCER
            )
        job_type = fc.job_type_job.JobTypeJobFacet(
            processingType="BATCH",
            integration=job.integration,
            jobType=job.job_type,
            producer=PRODUCER,
        )
        return ev.RunEvent(
            eventType=ev.RunState[state],
            eventTime=when.replace(tzinfo=UTC).isoformat(),
            producer=PRODUCER,
            run=ev.Run(runId=job.run_id, facets=run_facets),
            job=ev.Job(namespace=self.namespace, name=job.name, facets={"jobType": job_type}),
            inputs=[self._input(d, final) for d in inputs],
            outputs=[self._output(d, final) for d in outputs],
        )

    def _facets(self, dataset: _Dataset) -> dict[str, Any]:
        if dataset.fields is None:
            return {}
        schema = self.fc.schema_dataset
        fields = [schema.SchemaDatasetFacetFields(name=n, type=t) for n, t in dataset.fields]
        return {"schema": schema.SchemaDatasetFacet(fields=fields, producer=PRODUCER)}

    def _input(self, dataset: _Dataset, final: bool) -> Any:
        stats: dict[str, InputDatasetFacet] = {}
        if final and dataset.rows is not None:
            stats["inputStatistics"] = (
                self.fc.input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
                    rowCount=dataset.rows, producer=PRODUCER
                )
            )
        return self.ev.InputDataset(
            dataset.namespace, dataset.name, inputFacets=stats, facets=self._facets(dataset)
        )

    def _output(self, dataset: _Dataset, final: bool) -> Any:
        stats: dict[str, OutputDatasetFacet] = {}
        if final and dataset.rows is not None:
            stats["outputStatistics"] = (
                self.fc.output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                    rowCount=dataset.rows, producer=PRODUCER
                )
            )
        return self.ev.OutputDataset(
            dataset.namespace, dataset.name, outputFacets=stats, facets=self._facets(dataset)
        )


def _sync_events(
    builder: _EventBuilder,
    parent: _Job,
    pipeline: PipelineInfo,
    site: tuple[str, str],
    entry: RunEntry,
    columns: Columns | None,
    default: datetime,
) -> list[Any]:
    source, stream = entry.source, entry.stream
    declared = pipeline.sources.get(source) or {}
    connector = str(declared.get("connector") or source)
    schema = str(declared.get("schema") or source)
    job = builder.job(f"sync.{source}.{stream}", "SYNC", "MDSTACK", parent)
    found = columns(schema, stream) if columns is not None else None
    source_in = _Dataset(f"{connector}://{source}", stream, rows=entry.rows_read)
    fields = tuple(found.items()) if found else None
    written = entry.inserted + entry.updated
    table_out = _Dataset(site[0], f"{site[1]}.{schema}.{stream}", fields, written)
    begun = _time(entry.started_at) or default
    ended = _time(entry.finished_at) or begun
    state = _ENDED.get(entry.status, "FAIL")
    error = entry.error if state == "FAIL" else None
    return [
        builder.event("START", job, begun, [source_in], [table_out]),
        builder.event(state, job, ended, [source_in], [table_out], error=error),
    ]


def _dbt_events(
    builder: _EventBuilder,
    parent: _Job,
    manifest: Mapping[str, Any],
    namespace: str,
    node: NodeResult,
    begun: datetime,
    ended: datetime,
) -> list[Any]:
    unique_id = node.unique_id
    found = (manifest.get("nodes") or {}).get(unique_id) or {}
    kind = node.resource_type.upper()
    job = builder.job(f"dbt.{unique_id.split('.', 1)[-1]}", kind, "DBT", parent)
    inputs = [
        _Dataset(namespace, relation)
        for upstream in (found.get("depends_on") or {}).get("nodes") or []
        if (relation := _relation(manifest, upstream)) is not None
    ]
    outputs = []
    if (relation := _relation(manifest, unique_id)) is not None:
        declared = tuple(
            (name, column.get("data_type")) for name, column in (found.get("columns") or {}).items()
        )
        outputs.append(_Dataset(namespace, relation, declared or None, node.rows_affected))
    state = _DBT_ENDED.get(node.status, "FAIL")
    error = node.message if state == "FAIL" else None
    return [
        builder.event("START", job, begun, inputs, outputs),
        builder.event(state, job, ended, inputs, outputs, error=error),
    ]


def _relation(manifest: Mapping[str, Any], unique_id: str) -> str | None:
    """``database.schema.name`` of a dbt node or source; None for tests and unknown ids."""
    node = (manifest.get("sources") or {}).get(unique_id) or (manifest.get("nodes") or {}).get(
        unique_id
    )
    if not node or node.get("resource_type") not in ("source", *_DBT_JOBS):
        return None
    name = node.get("identifier") or node.get("alias") or node["name"]
    return ".".join(str(part) for part in (node.get("database"), node["schema"], name) if part)


def _time(moment: datetime | None) -> datetime | None:
    """``moment`` in naive UTC (None stays None)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def build_events(
    pipeline: PipelineInfo,
    summary: RunResults,
    manifest: Mapping[str, Any],
    columns: Columns | None,
    now: datetime,
) -> list[Any]:
    """The events of :func:`run_events`, for a config already read."""
    builder = _EventBuilder(pipeline.namespace, summary.region, summary.run_id)
    site = pipeline.site()
    streams = summary.streams
    nodes = summary.dbt.run.nodes if summary.dbt else ()
    started = min((t for s in streams if (t := _time(s.started_at))), default=now)
    clock = max((t for s in streams if (t := _time(s.finished_at))), default=started)
    parent = builder.job("pipeline", "PIPELINE", "MDSTACK")
    events = [builder.event("START", parent, started)]
    for entry in streams:
        events += _sync_events(builder, parent, pipeline, site, entry, columns, started)
    for node in nodes:
        if node.resource_type in _DBT_JOBS:
            ends = clock + timedelta(seconds=node.seconds)
            events += _dbt_events(builder, parent, manifest, site[0], node, clock, ends)
            clock = ends
    dbt_failed = summary.dbt is not None and not summary.dbt.run.success
    failed = any(s.status != "succeeded" for s in streams) or dbt_failed
    events.append(builder.event("FAIL" if failed else "COMPLETE", parent, max(clock, now)))
    return events


def run_events(
    config: Any,
    summary: RunResults,
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
        summary: the run's results (a ``RunSummary``): ``run_id``, ``region``, ``streams``
            (ledger entries), ``dbt`` (the transform step, or None).
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
    return build_events(pipeline, summary, manifest, columns, now)
