"""What the streams of one run share in one process: config, secrets, warehouse, sources.

Loading ``stack.yml``, resolving secrets, attaching the warehouse and
discovering a source cost more than syncing a small stream. A run therefore
opens them once, on its first stream, and every stream of the run in this
process reuses them: each sync gets its own warehouse handle
(:meth:`~stack.warehouse.base.Warehouse.cursor`), so streams sync in parallel
threads. Steps still take only ids and paths: a step that lands in another
process opens that process's own scope. :func:`close_scope` ends a run's
scope (revoking secret leases and releasing the warehouse) before dbt needs
the warehouse.

:func:`open_source` is where a source's connector is built for a region, its
secrets revealed (:func:`check_state` asks it whether it takes a state);
:func:`sync_source` syncs the streams of one source in order, without a scope (for
scripts and benchmarks). Streams a source reads in one pass (every CDC stream of a
PostgreSQL source shares its replication slot) sync together, as one job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from connectors import base, load_source
from connectors.base import Catalog, SharedRead, Source, State
from stack.config import SourceConfig, StackConfig
from stack.errors import ConfigError, ConnectorError, MdstackError
from stack.load import Progress, RunContext, StreamPlan, plan_stream, repair, sync_stream
from stack.load.group import sync_group
from stack.load.ledger import RunEntry, StreamKey, describe_error
from stack.logs import log_reported_error
from stack.secrets import Resolver, reveal
from stack.warehouse import Warehouse

log = logging.getLogger(__name__)


def open_source(
    config: StackConfig,
    source_name: str,
    region: str,
    resolve: Callable[[Any, str], Any] | None = None,
) -> Source:
    """The connector of a source, configured for a region, its secrets revealed.

    ``resolve(value, where)`` turns secret references in the source's config into
    values (see :class:`stack.secrets.Resolver`); they are revealed only here, where
    the connector is built.
    """
    settings = config.source_config(source_name, region)
    if resolve is not None:
        settings = reveal(resolve(settings, f"sources.{source_name}.config"))
    return load_source(config.source(source_name).connector, source_name, settings)


def check_state(
    config: StackConfig,
    source_name: str,
    stream: str,
    region: str,
    state: object,
    resolve: Callable[[Any, str], Any] | None = None,
) -> State:
    """``state`` as the source would take it to read ``stream`` in ``region``: a state
    set by hand must not make the next read fail, or silently start over.

    The source is opened and discovered (the stream's cursor type is the catalog's).

    Raises:
        ConfigError: the source would not accept it; the message says what it expects.
        ConnectorError: the source could not be discovered.
    """
    source_cfg = declared_streams(config, source_name, [stream])
    source = open_source(config, source_name, region, resolve)
    plan = plan_stream(source_name, source_cfg, source.discover(), stream)
    try:
        return base.check_state(source, plan.stream, state)
    except ConnectorError as exc:
        raise ConfigError(
            f"{source_name}.{stream} does not accept this state: {exc.message}",
            key="VALUE",
            hint="give a state of that shape (`mdstack state show` shows the stored ones)",
        ) from None


def declared_streams(config: StackConfig, source_name: str, names: Sequence[str]) -> SourceConfig:
    """The source's config, once every one of ``names`` is a stream it declares.

    Raises:
        ConfigError: a name is not declared under ``sources.<source>.streams``.
    """
    source_cfg = config.source(source_name)
    unknown = [n for n in names if n not in source_cfg.streams]
    if unknown:
        raise ConfigError(
            f"streams {unknown} are not declared for source {source_name!r}",
            key=f"sources.{source_name}.streams",
            hint=f"declared: {', '.join(source_cfg.streams)}",
        )
    return source_cfg


def sync_source(
    wh: Warehouse,
    config: StackConfig,
    source_name: str,
    ctx: RunContext,
    streams: Iterable[str] | None = None,
    progress: Progress | None = None,
    resolve: Callable[[Any, str], Any] | None = None,
) -> list[RunEntry]:
    """Sync the selected streams (default: all) of one source for one region, in order.

    ``resolve`` reveals secrets as :func:`open_source` says. The first failing stream
    stops the source; the streams before it stay committed.
    """
    source_cfg = config.source(source_name)
    names = list(streams) if streams else list(source_cfg.streams)
    declared_streams(config, source_name, names)
    source = open_source(config, source_name, ctx.region, resolve)
    catalog = source.discover()
    plans = [plan_stream(source_name, source_cfg, catalog, n) for n in names]
    shared = [p for p in plans if _shared(source, p)]
    others = [s for s in source_cfg.streams if s not in {p.name for p in shared}]
    entries = sync_group(wh, source, shared, ctx, others, progress) if shared else {}
    return [entries.get(p.name) or sync_stream(wh, source, p, ctx, progress) for p in plans]


def _shared(source: Source, plan: StreamPlan) -> bool:
    """Whether the source reads the stream together with others of its streams."""
    return isinstance(source, SharedRead) and source.shares_read(plan.stream)


class _Group:
    """The shared reads of one source in a run: who was synced, and how it went."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.claimed: set[str] = set()
        self.outcomes: dict[str, RunEntry | Exception] = {}

    def take(self, stream: str) -> RunEntry:
        outcome = self.outcomes.pop(stream)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class RunScope:
    """The open resources of one run in this process; thread-safe.

    Args:
        config: the loaded ``stack.yml``.
        ctx: the run (pipeline, region, run id).
        resolver: the run's secret resolver (unopened: the scope opens and closes it).
        warehouse: builds the (unopened) warehouse from the opened resolver.
    """

    def __init__(
        self,
        config: StackConfig,
        ctx: RunContext,
        resolver: Resolver,
        warehouse: Callable[[Resolver], Warehouse],
    ):
        self.config = config
        self.ctx = ctx
        self._stack = ExitStack()
        try:
            self.resolver = self._stack.enter_context(resolver)
            self.warehouse: Warehouse = self._stack.enter_context(warehouse(self.resolver))
        except BaseException:
            self._stack.close()
            raise
        self._sources: dict[str, tuple[Source, Catalog]] = {}
        self._discovering: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}

    def source(self, name: str) -> tuple[Source, Catalog]:
        """The source's connector and catalog, discovered on first use (once per source,
        while other sources' streams go on)."""
        with self._lock:
            discovering = self._discovering.setdefault(name, threading.Lock())
        with discovering:
            if name not in self._sources:
                source = open_source(self.config, name, self.ctx.region, self.resolver.resolve)
                self._sources[name] = (source, source.discover())
            return self._sources[name]

    def sync(
        self,
        source_name: str,
        stream: str,
        progress: Progress | None = None,
        full_refresh: bool = False,
        group: Sequence[str] = (),
    ) -> RunEntry:
        """Sync one stream on a warehouse handle of its own; returns its ledger entry.

        ``full_refresh``: read it from scratch, its stored state ignored, and replace the
        region's rows in one transaction (audited, :func:`stack.load.repair.full_refresh`).
        ``group``: the streams of the source this run syncs; a stream the source reads
        together with others (:class:`~connectors.base.SharedRead`) syncs with those of
        them it shares the read with, in one job, run by the first of them to get here
        (:func:`stack.load.group.sync_group`). Every line logged meanwhile names the run
        and the stream; a failure, from opening the source to the last commit, is logged
        here once.
        """
        ctx, name = self.ctx, f"{source_name}.{stream}"
        with ctx.logging(name):
            try:
                declared = declared_streams(self.config, source_name, [stream])
                source, catalog = self.source(source_name)
                plan = plan_stream(source_name, declared, catalog, stream)
                if _shared(source, plan):
                    return self._sync_shared(source_name, stream, group, progress, full_refresh)
                with self.warehouse.cursor() as wh:
                    if not full_refresh:
                        return sync_stream(wh, source, plan, ctx, progress)
                    key = StreamKey(ctx.pipeline, source_name, stream, ctx.region)
                    swap = repair.full_refresh(wh, key, ctx.run_id)
                    # What the read brings is the source's whole truth: nothing to detect.
                    plan = replace(plan, snapshot_deletes=False)
                    return sync_stream(wh, source, plan, ctx, progress, replace=swap)
            except Exception as exc:
                log_reported_error(log, "%s [%s] failed: %s", name, ctx.region, describe_error(exc))
                raise

    def _sync_shared(
        self,
        source_name: str,
        stream: str,
        group: Sequence[str],
        progress: Progress | None,
        full_refresh: bool,
    ) -> RunEntry:
        """The stream's outcome in its source's shared read: taken if another stream's job
        synced it already, else from a job of its own that syncs the streams of ``group``
        the source reads with it and no job of this run took yet (a retried stream syncs
        alone)."""
        with self._lock:
            shared = self._groups.setdefault(source_name, _Group())
        with shared.lock:
            if stream in shared.outcomes:
                return shared.take(stream)
            source, catalog = self.source(source_name)
            source_cfg = self.config.source(source_name)
            plans = []
            for name in dict.fromkeys([stream, *group]):
                if name != stream and (name in shared.claimed or name not in source_cfg.streams):
                    continue
                try:
                    plan = plan_stream(source_name, source_cfg, catalog, name)
                except MdstackError:
                    continue  # it fails on its own, when its turn comes
                if name == stream or _shared(source, plan):
                    plans.append(replace(plan, snapshot_deletes=False) if full_refresh else plan)
                    shared.claimed.add(name)
            others = [s for s in source_cfg.streams if s not in {p.name for p in plans}]
            finished: dict[str, RunEntry] = {}
            try:
                with self.warehouse.cursor() as wh:
                    sync_group(
                        wh,
                        source,
                        plans,
                        self.ctx,
                        others,
                        progress,
                        full_refresh=full_refresh,
                        finished=finished,
                    )
            except Exception as exc:
                shared.outcomes.update({p.name: exc for p in plans})
            shared.outcomes.update(finished)
            return shared.take(stream)

    def close(self) -> None:
        self._stack.close()


_SCOPES: dict[Hashable, RunScope] = {}
_SCOPES_LOCK = threading.Lock()


def shared_scope(key: Hashable, open_scope: Callable[[], RunScope]) -> RunScope:
    """The scope of run ``key`` in this process, opened by the first stream that asks."""
    with _SCOPES_LOCK:
        if key not in _SCOPES:
            _SCOPES[key] = open_scope()
        return _SCOPES[key]


def close_scope(key: Hashable) -> None:
    """Close the scope of run ``key`` in this process, if one is open."""
    with _SCOPES_LOCK:
        scope = _SCOPES.pop(key, None)
    if scope is not None:
        scope.close()
