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
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any

from connectors.base import Catalog, Source
from stack.config import StackConfig
from stack.secrets import Resolver
from stack.sync import (
    Progress,
    RunContext,
    declared_streams,
    open_source,
    plan_stream,
    sync_stream,
)
from stack.warehouse import Warehouse


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
        self, source_name: str, stream: str, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Sync one stream on a warehouse handle of its own; its ledger entry as a dict."""
        declared = declared_streams(self.config, source_name, [stream])
        source, catalog = self.source(source_name)
        plan = plan_stream(source_name, declared, catalog, stream)
        with self.warehouse.cursor() as wh:
            return asdict(sync_stream(wh, source, plan, self.ctx, progress))

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
