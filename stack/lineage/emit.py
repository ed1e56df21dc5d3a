"""Sending a run's OpenLineage events where the ``lineage:`` section says.

:func:`emit_run` builds a run's events (:func:`stack.lineage.events.run_events`) and
sends them; :func:`emit_events` sends events already built, through openlineage-python's
``file`` or ``http`` transport. Sending never fails a run: a transport error is logged
and the count of events delivered is returned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from stack.config.lineage import LineageConfig
from stack.errors import ConfigError
from stack.lineage.events import Columns, RunResults, load_manifest, read_pipeline, run_events

log = logging.getLogger(__name__)


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
    summary: RunResults,
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
        summary: the run's results (a ``RunSummary``).
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
