"""The pipeline's steps as plain functions: sync one stream, transform, refresh, report.

Steps take only ids and paths, so a Prefect task (``flows/``) can wrap one in
a few lines and run it in any worker process. The streams of one run share
what is costly to open (config, secrets, warehouse, discovered sources) through
:mod:`stack.run.scope`; the other steps open and close their own warehouse
connection. :func:`run_pipeline` chains the steps without Prefect, for
``mdstack sync`` and for tests, syncing streams in parallel threads within the
bounds of :mod:`stack.run.parallel`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from stack import bi, lineage, transform
from stack.config import DuckDBTarget, StackConfig, load_config
from stack.errors import ConfigError, SyncConflict
from stack.load import Progress, RunContext, ledger, utcnow
from stack.load.ledger import RunEntry
from stack.logs import log_context
from stack.redact import install_redaction
from stack.run.parallel import Bounds, StreamJob, run_bounded
from stack.run.replication_lag import ledger_replication_lag
from stack.run.scope import RunScope, close_scope, shared_scope
from stack.run.summary import RunSummary, changed_streams, failed_entry
from stack.secrets import Resolver, reveal
from stack.transform import checks
from stack.transform.result import TransformResult
from stack.transform.source_freshness import freshness_from_nodes
from stack.warehouse import Warehouse, connect

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def new_run_id() -> str:
    """A sortable-enough, unique run id (shows in `_mds_run_id` and the ledger)."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Selection:
    """What a run covers: the region, the sources, optionally some streams."""

    region: str
    sources: tuple[str, ...]
    streams: tuple[str, ...] = ()

    def streams_of(self, config: StackConfig, source: str) -> list[str]:
        declared = config.source(source).streams
        return [s for s in declared if not self.streams or s in self.streams]

    def jobs(self, config: StackConfig) -> list[StreamJob]:
        """Every stream of the selection, in the order of ``stack.yml``."""
        return [StreamJob(src, s) for src in self.sources for s in self.streams_of(config, src)]


def select(
    config: StackConfig, region: str, sources: Iterable[str] = (), streams: Iterable[str] = ()
) -> Selection:
    """Validate a selection against ``stack.yml`` (unknown names raise ConfigError)."""
    chosen = tuple(sources) or tuple(config.sources)
    for name in chosen:
        config.source(name)
    wanted = tuple(streams)
    known = {s for name in chosen for s in config.source(name).streams}
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise ConfigError(
            f"unknown streams {unknown}",
            key="--stream",
            hint=f"declared streams: {', '.join(sorted(known))}",
        )
    return Selection(config.check_region(region), chosen, wanted)


def sync_run_stream(
    config_path: str | Path,
    target: str | None,
    region: str,
    source: str,
    stream: str,
    run_id: str,
    full_refresh: bool = False,
    group: Sequence[str] = (),
) -> RunEntry:
    """Sync one stream of run ``run_id``: the step of a Prefect task.

    The run's streams in this process share one scope (:mod:`stack.run.scope`);
    call :func:`end_syncs` when the last one finished. ``full_refresh`` and ``group``
    (the run's streams of the source): see :meth:`RunScope.sync
    <stack.run.scope.RunScope.sync>`.
    """
    scope = _shared(config_path, target, region, run_id)
    return scope.sync(source, stream, full_refresh=full_refresh, group=group)


def end_syncs(config_path: str | Path, target: str | None, region: str, run_id: str) -> None:
    """Close the run's shared scope in this process (warehouse, secret leases), if open."""
    close_scope(_scope_key(config_path, target, region, run_id))


def sync_selection(
    config_path: str | Path,
    target: str | None,
    selection: Selection,
    run_id: str,
    progress: Progress | None = None,
    full_refresh: bool = False,
) -> list[RunEntry]:
    """Sync every stream of the selection in parallel threads, within ``stack.yml``'s bounds.

    A stream that fails is reported in its entry (``status: failed``) and the others go
    on; what each committed stays committed. Returns the entries in the order of
    ``stack.yml``. ``full_refresh``: each stream is read from scratch and its region's
    rows replaced in one transaction.
    """
    scope = _shared(config_path, target, selection.region, run_id)
    bounds = Bounds.of(scope.config)
    jobs = selection.jobs(scope.config)
    entries: dict[StreamJob, RunEntry] = {}
    try:
        with ThreadPoolExecutor(bounds.max_parallel, thread_name_prefix="mdstack-sync") as pool:

            def start(job: StreamJob) -> Future[RunEntry]:
                group = selection.streams_of(scope.config, job.source)
                return pool.submit(
                    scope.sync, job.source, job.stream, progress, full_refresh, group
                )

            for job, future in run_bounded(jobs, bounds, start):
                error = future.exception()
                entries[job] = (
                    future.result() if error is None else failed_entry(scope.ctx, job, error)
                )
    finally:
        end_syncs(config_path, target, selection.region, run_id)
    return [entries[job] for job in jobs]


def _scope_key(config_path: str | Path, target: str | None, region: str, run_id: str) -> Hashable:
    return (str(Path(config_path).resolve()), target, region, run_id)


def _open_scope(config_path: str | Path, target: str | None, region: str, run_id: str) -> RunScope:
    config = load_config(config_path)
    return RunScope(
        config,
        RunContext(config.name, region, run_id),
        secrets_for(config),
        lambda resolver: open_target(config, target, resolver),
    )


def _shared(config_path: str | Path, target: str | None, region: str, run_id: str) -> RunScope:
    return shared_scope(
        _scope_key(config_path, target, region, run_id),
        lambda: _open_scope(config_path, target, region, run_id),
    )


def secrets_for(config: StackConfig) -> Resolver:
    """A resolver for one run step; every value it resolves is redacted from logs."""
    install_redaction()
    return Resolver(config.secrets, base_dir=config.root)


def open_target(config: StackConfig, name: str | None, resolver: Resolver) -> Warehouse:
    """The warehouse for target ``name``, its credential references resolved (unopened).

    ``name`` may be ``TARGET@ENV``: environment ENV of the target (a clone made with
    ``mdstack clone``), for developer and CI sandboxes.
    """
    name, _, env = (name or "").partition("@")
    warehouse = _target_warehouse(config, name or None, resolver)
    return warehouse.environment(env) if env else warehouse


def _target_warehouse(config: StackConfig, name: str | None, resolver: Resolver) -> Warehouse:
    target = config.active_target(name)
    if isinstance(target, DuckDBTarget):
        where = f"targets.{name or config.target}"
        update: dict[str, BaseModel] = {}  # where and who: references, resolved here
        if target.catalog is not None:
            who = ["host", "database", "user", "password"]
            catalog = _resolved(target.catalog, who, resolver, f"{where}.catalog")
            update["catalog"] = catalog
        if target.storage is not None:
            where_and_who = ["endpoint", "key_id", "secret"]
            storage = _resolved(target.storage, where_and_who, resolver, f"{where}.storage")
            update["storage"] = storage
        return connect(target.model_copy(update=update), config.root)
    resolved = resolver.resolve(
        target.model_dump(by_alias=True), f"targets.{name or config.target}"
    )
    fields = type(target).model_fields
    values = {field: resolved[info.alias or field] for field, info in fields.items()}
    return connect(type(target).model_construct(**values), config.root)


def _resolved(model: M, fields: Sequence[str], resolver: Resolver, where: str) -> M:
    """``model`` with the secret references in ``fields`` resolved (``where``: its key path)."""
    values = {
        field: reveal(resolver.resolve(value, f"{where}.{field}"))
        for field in fields
        if (value := getattr(model, field))
    }
    return model.model_copy(update=values)


def run_pipeline(
    config_path: str | Path,
    target: str | None,
    selection: Selection,
    run_id: str | None = None,
    progress: Progress | None = None,
    transform: bool = True,
    full_refresh: bool = False,
) -> RunSummary:
    """Sync the selection, then run dbt on what changed — without Prefect.

    ``full_refresh``: the selected streams are read from scratch, their stored state
    ignored, and each region's rows replaced in one transaction (``--full-refresh``).
    """
    summary = RunSummary(run_id or new_run_id(), selection.region)
    summary.streams = sync_selection(
        config_path, target, selection, summary.run_id, progress, full_refresh
    )
    if transform:
        summary.dbt = transform_changes(
            config_path,
            target,
            selection.region,
            changed_streams(summary.streams),
            summary.run_id,
        )
        summary.dashboards = refresh_dashboards(
            config_path, selection.region, summary.run_id, summary.published
        )
    return summary


def transform_changes(
    config_path: str | Path,
    target: str | None,
    region: str,
    changed: Mapping[str, Mapping[str, bool]],
    run_id: str = "",
) -> TransformResult | None:
    """``dbt build`` the models downstream of the changed streams, then the data checks.

    ``dbt source freshness`` of the changed streams' sources runs after the build; each
    source is a check result (dbt's ``warn`` a warning, ``error`` blocking the publish).
    Every dbt node's result goes to the ``_mds_dbt_results`` ledger table.

    With ``publish.audit`` (write-audit-publish), dbt builds and tests, and the
    ``checks:`` run, in a zero-copy clone of the warehouse (environment
    ``audit-<region>``); only a green build with no failing ``error`` check is
    published, atomically. A red one leaves the published warehouse untouched and the
    audit environment in place for debugging. Returns None when nothing changed. See
    :meth:`stack.transform.Selection.args` for how full refreshes are passed on.
    """
    config = load_config(config_path)
    if config.dbt is None or not config.dbt.enabled:
        return None
    picked = transform.selection(changed)
    if picked is None:
        return None
    with (
        log_context(run_id=run_id, pipeline=config.name, region=region),
        secrets_for(config) as resolver,
        ExitStack() as held,
    ):
        published = open_target(config, target, resolver)
        if published.capabilities.concurrent_writers:  # a handle of its own holds the lock
            locker = held.enter_context(open_target(config, target, resolver))
            held.enter_context(one_build_at_a_time(locker))
        audit_env = f"audit-{region}" if config.publish.audit else None
        building = published.clone_into(audit_env) if audit_env else published
        run, freshness = (
            transform.run_dbt(
                config.resolve_path(config.dbt.project_dir),
                building.dbt_output(),
                args,
                vars=config.dbt_vars(region),
                env=building.dbt_env(),
            )
            for args in (
                ["build", *picked.args()],
                ["source", "freshness", *picked.freshness_args()],
            )
        )
        results = freshness_from_nodes(freshness.nodes, region)
        with building as wh:  # the audit clone: dbt has released it
            checks.record_results(wh, results, run_id, utcnow())
            if config.checks:
                results += _data_checks(config, wh, region, run_id)
        built = TransformResult(
            run, audit=audit_env, blocked=bool(checks.blocking(results)), checks=tuple(results)
        )
        result = _publish(published, built, run_id)
        if result.published:
            published.refresh_bi_file()
        with published as wh:  # after the publish: the ledger of the published warehouse
            for done in (run, freshness):
                ledger.record_dbt_results(
                    wh, (run_id, config.name, region), done.command, done.nodes, utcnow()
                )
            previous = ledger.record_snapshot(wh, (run_id, config.name, region), utcnow())
    return replace(result, previous_run=previous if published.capabilities.diff else None)


DBT_BUILD_LOCK = "dbt-build"
DBT_BUILD_WAIT_S = 3600.0
"""How long a region's dbt build waits for another region's to finish."""


@contextmanager
def one_build_at_a_time(wh: Warehouse, wait: float = DBT_BUILD_WAIT_S) -> Iterator[None]:
    """Hold the warehouse's dbt build lock for the block, waiting up to ``wait`` seconds.

    On a warehouse several processes write at once, the regions' dbt runs replace the same
    models (a view renamed to its backup, the new one created): two at once collide. The
    loads still run side by side; the builds take turns.
    """
    deadline, pause = time.monotonic() + wait, 0.5
    with ExitStack() as stack:
        while True:
            try:
                stack.enter_context(wh.lock(DBT_BUILD_LOCK))
                break
            except SyncConflict:
                if time.monotonic() > deadline:
                    raise
                log.info("waiting for another region's dbt build to finish")
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
        yield


def _publish(published: Warehouse, built: TransformResult, run_id: str) -> TransformResult:
    """Publish a good audit build (write-audit-publish); without an audit environment the
    build went to the published warehouse already, and counts as published when good."""
    if built.audit is None:
        return replace(built, published=built.ok)
    if built.ok:
        published.publish(built.audit)
        published.drop_environment(built.audit)
        return replace(built, published=True, audit=None)
    if built.checks:  # not published: keep the results where people look
        with published as wh:
            checks.record_results(wh, built.checks, run_id, utcnow())
    return built


def _data_checks(
    config: StackConfig, wh: Warehouse, region: str, run_id: str
) -> list[checks.DataCheckResult]:
    return checks.run_checks(
        wh,
        config.checks,
        region,
        run_id,
        utcnow(),
        source_count=ledger.ledger_source_count(wh, config.name),
        source_lag=ledger_replication_lag(wh, config.name),
        schemas={name: s.schema_ for name, s in config.sources.items()},
    )


def check_tables(
    config_path: str | Path, target: str | None, region: str, run_id: str
) -> list[checks.DataCheckResult]:
    """``mdstack check``: the data checks on the (published) warehouse, for one region."""
    config = load_config(config_path)
    with secrets_for(config) as resolver, open_target(config, target, resolver) as wh:
        return _data_checks(config, wh, region, run_id)


def emit_lineage(config_path: str | Path, target: str | None, summary: RunSummary) -> int:
    """Send the run's OpenLineage events (streams and dbt models); 0 when not configured."""
    config = load_config(config_path)
    if config.lineage is None:
        return 0
    with secrets_for(config) as resolver, open_target(config, target, resolver) as wh:
        return lineage.emit_run(
            config, summary, target=target, columns=wh.columns, resolve=resolver.resolve
        )


def refresh_dashboards(
    config_path: str | Path, region: str, run_id: str, published: bool
) -> list[bi.HookResult]:
    """Fire the ``bi:`` hooks — only after a good publish; never raises for a hook.

    Secrets are resolved here, per hook, so only references travel as parameters.
    """
    config = load_config(config_path)
    if not config.bi:
        return []
    if not published:
        return bi.skip_all(config.bi, bi.NOT_PUBLISHED)
    run = bi.RunInfo(config.name, region, run_id, utcnow())
    with (
        log_context(run_id=run_id, pipeline=config.name, region=region),
        secrets_for(config) as resolver,
    ):
        hooks = [bi.resolve_hook(h, resolver.resolve, f"bi[{i}]") for i, h in enumerate(config.bi)]
        return [bi.refresh(hook, run) for hook in hooks]


def dbt_passthrough(
    config_path: str | Path, target: str | None, args: list[str], region: str | None = None
) -> transform.DbtRun:
    """Run any dbt command against the active target, with the generated profile."""
    config = load_config(config_path)
    if config.dbt is None:
        raise ConfigError(
            "no `dbt:` section in stack.yml",
            key="dbt",
            hint="add `dbt: {project_dir: dbt_project}`",
        )
    with secrets_for(config) as resolver:
        warehouse = open_target(config, target, resolver)
        return transform.run_dbt(
            config.resolve_path(config.dbt.project_dir),
            warehouse.dbt_output(),
            args,
            vars=config.dbt_vars(region or config.region_names()[0]),
            env=warehouse.dbt_env(),
        )
