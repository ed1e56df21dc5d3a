"""Sensors: Prefect events that start deployments (``mdstack sensor``).

Files landing in a folder: a deployment with ``on_file: {path, pattern}`` carries
a trigger on the event ``mdstack.file.landed`` whose resource label
``mdstack.landing`` is that folder (see :mod:`stack.run.deployments`). This module is
the other half: a poll-based watcher of those folders that emits one such event
per new file, once the file has stopped growing (same size and modification
time on two polls in a row), so a half-copied file never starts a run. What it
has reported is kept in a small JSON state file, so a restarted sensor does not
report old files again.

"Run when pipeline X finished" needs no sensor: the deployment's trigger
matches Prefect's own ``prefect.flow-run.Completed`` event of X's deployment.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.events import emit_event
from prefect.events.worker import EventsWorker

from stack.config import load_config
from stack.run import deployments as plans

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LandedFile:
    """A file that landed in a watched folder."""

    path: Path
    landing: plans.Landing
    size: int
    modified: float


class LandingWatch:
    """Polls folders and returns each file once, when it has settled."""

    def __init__(self, landings: list[plans.Landing], state_file: Path) -> None:
        self.landings = landings
        self.state_file = state_file
        self.reported: dict[str, list[float]] = _load(state_file)
        self._last: dict[str, tuple[int, float]] = {}

    def poll(self) -> list[LandedFile]:
        """Files that appeared (or changed) and held still since the previous poll."""
        landed, seen = [], {}
        for landing in self.landings:
            for path in sorted(Path(landing.folder).glob(landing.pattern)):
                if not path.is_file():
                    continue
                stat = path.stat()
                key, mark = str(path), (stat.st_size, stat.st_mtime)
                seen[key] = mark
                if self._last.get(key) == mark and self.reported.get(key) != list(mark):
                    landed.append(LandedFile(path, landing, *mark))
        self._last = seen
        return landed

    def mark_reported(self, files: list[LandedFile]) -> None:
        for file in files:
            self.reported[str(file.path)] = [file.size, file.modified]
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.reported, indent=1, sort_keys=True))


def _load(state_file: Path) -> dict[str, list[float]]:
    return json.loads(state_file.read_text()) if state_file.exists() else {}


def landed_event(file: LandedFile, pipeline: str) -> dict[str, Any]:
    """The ``mdstack.file.landed`` event for one file (``emit_event`` keyword arguments)."""
    return {
        "event": plans.FILE_LANDED,
        "resource": {
            "prefect.resource.id": f"mdstack.file.{file.path}",
            "prefect.resource.name": file.path.name,
            "mdstack.landing": file.landing.folder,
            "mdstack.pipeline": pipeline,
        },
        "payload": {
            "path": str(file.path),
            "size": file.size,
            "modified": datetime.fromtimestamp(file.modified, UTC).isoformat(),
        },
    }


def poll_once(watch: LandingWatch, pipeline: str) -> list[LandedFile]:
    """One poll: emit an event per settled new file and wait until they are sent."""
    landed = watch.poll()
    for file in landed:
        emit_event(**landed_event(file, pipeline))
        log.info("file landed: %s", file.path)
    if landed:
        EventsWorker.drain_all(timeout=60)
        watch.mark_reported(landed)
    return landed


def watch(
    config_path: str | Path | None = None,
    interval: float = 10.0,
    state_file: Path | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Watch every ``on_file`` folder of the deployment plan until ``stop`` is set."""
    config = load_config(config_path)
    landings = plans.landings(plans.plan_deployments(config))
    state = state_file or config.root / ".mdstack" / "sensor-state.json"
    sensor = LandingWatch(landings, state)
    log.info("watching %s", ", ".join(f"{x.folder}/{x.pattern}" for x in landings) or "nothing")
    stop = stop or threading.Event()
    while not stop.is_set():
        poll_once(sensor, config.name)
        stop.wait(interval)
