"""A source's ``concurrency`` across flow runs: one Prefect global concurrency limit per source.

Within a run, :mod:`stack.run.parallel` starts at most ``sources.<name>.concurrency`` streams
of a source at once. Runs of several regions (or a backfill next to the daily run) are
separate flow runs, and an API's rate limit or a database's connection cap counts them
all: so ``mdstack deploy`` also keeps one global concurrency limit per source on the
server, ``mdstack-<stack>-source-<source>`` with ``concurrency`` slots, and a stream task
holds a slot of its source's limit while it syncs.

A flow run looks the limits up once (:func:`source_limits`); sources without one (no
``mdstack deploy`` to this server yet, or a run without a server) sync without taking a
slot, so nothing waits on a limit nobody made. A slot is leased: if a worker dies while
holding it, the server frees it when the lease runs out (5 minutes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.concurrency.sync import concurrency

from stack.config import StackConfig

_PAGE = 200


def limit_name(stack: str, source: str) -> str:
    return f"mdstack-{stack}-source-{source}"


def ensure_source_limits(client: SyncPrefectClient, config: StackConfig) -> None:
    """Create or resize each source's limit; delete this stack's limits of removed sources."""
    wanted = {limit_name(config.name, n): s.concurrency for n, s in config.sources.items()}
    for name, slots in wanted.items():
        client.upsert_global_concurrency_limit_by_name(name, slots)
    prefix = limit_name(config.name, "")
    for limit in _all_limits(client):
        if limit.name.startswith(prefix) and limit.name not in wanted:
            client.delete_global_concurrency_limit_by_name(limit.name)


def source_limits(stack: str, sources: Iterable[str]) -> dict[str, str]:
    """Source -> its limit's name, for the sources that have a limit on the server (one
    listing of the limits, not a request per source)."""
    with get_client(sync_client=True) as client:
        existing = {limit.name for limit in _all_limits(client)}
    names = {source: limit_name(stack, source) for source in sources}
    return {source: name for source, name in names.items() if name in existing}


@contextmanager
def source_slot(limit: str | None) -> Iterator[None]:
    """Hold one slot of ``limit`` (waiting for it), or nothing when there is no limit."""
    if limit is None:
        yield
        return
    with concurrency(limit, occupy=1, strict=True):
        yield


def _all_limits(client: SyncPrefectClient) -> Iterator[GlobalConcurrencyLimitResponse]:
    offset = 0
    while True:
        page = client.read_global_concurrency_limits(limit=_PAGE, offset=offset)
        yield from page
        if len(page) < _PAGE:
            return
        offset += _PAGE
