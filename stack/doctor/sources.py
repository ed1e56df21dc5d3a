"""Each source: its connector's ``check()`` (it connects and can read), for one region.

A connector that knows its server's prerequisites in detail runs them instead, one line
each: PostgreSQL with CDC (:mod:`connectors.postgres.preflight`) checks the connection, then
``wal_level``, the role, the publication, each table's replica identity and each stream's
slot, with the SQL that fixes what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from connectors.base import Source
from connectors.postgres.preflight import SLOT_LAG_WARN_BYTES
from stack.config import SourceConfig, StackConfig
from stack.doctor.check import Check, TimedOut, bounded, failed
from stack.errors import MdstackError
from stack.redact import redact
from stack.run.scope import open_source
from stack.secrets import Resolver

CHECK_SECONDS = 60.0
"""A source's check may take this long (a connector's own timeouts usually end it sooner)."""

Preflight = Callable[[Source, SourceConfig, int], list[Check]]


def source_checks(
    config: StackConfig,
    region: str,
    resolver: Resolver,
    slot_lag_warn: int = SLOT_LAG_WARN_BYTES,
) -> Iterator[Check]:
    """One or more checks per source, in the order of ``stack.yml``."""
    for name, declared in config.sources.items():
        area = f"source {name}"
        try:
            source = open_source(config, name, region, resolver.resolve)
        except MdstackError as exc:
            yield failed(area, "configured", exc)
            continue
        preflight = _PREFLIGHTS.get(declared.connector)
        try:
            if preflight is not None and (found := preflight(source, declared, slot_lag_warn)):
                yield from found
                continue
            result = bounded(source.check, CHECK_SECONDS)
        except MdstackError as exc:
            yield failed(area, "check", exc)
            continue
        except TimedOut as exc:
            yield Check("check", "fail", str(exc), "check that the source is reachable", area=area)
            continue
        message, _, hint = redact(result.message).partition("\n  hint: ")
        if result.ok:
            yield Check("check", "ok", message or f"{declared.connector}: config valid", area=area)
        else:
            yield Check("check", "fail", message, hint or _CHECK_FIX, area=area)


def _postgres(source: Source, declared: SourceConfig, slot_lag_warn: int) -> list[Check]:
    """The CDC prerequisites of the source's incremental streams; none without CDC."""
    from connectors.postgres import preflight
    from connectors.postgres.source import PostgresSource

    assert isinstance(source, PostgresSource)
    cfg = source.config
    if cfg.replication is None:
        return []
    streams = {
        stream: settings.primary_key
        for stream, settings in declared.streams.items()
        if settings.sync.startswith("incremental")
    }
    area = f"source {source.name}"
    seconds = CHECK_SECONDS + cfg.connect_timeout

    def run() -> list[Any]:
        return preflight.findings(cfg, source.name, streams, slot_lag_warn)

    try:
        found = bounded(run, seconds)
    except TimedOut as exc:
        return [
            Check("connects", "fail", str(exc), "check that the server is reachable", area=area)
        ]
    return [Check(f.name, f.status, redact(f.detail), redact(f.fix), area=area) for f in found]


_PREFLIGHTS: dict[str, Preflight] = {"postgres": _postgres}
_CHECK_FIX = "fix the source's `config:` in stack.yml, or make the source reachable"
