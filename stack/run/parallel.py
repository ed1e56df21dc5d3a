"""Which streams of a run sync at once: ``max_parallel_streams`` and each source's ``concurrency``.

One scheduler for both ways a run goes: the engine alone (threads of a
:class:`~concurrent.futures.ThreadPoolExecutor`) and the Prefect flow (tasks
submitted to its thread pool). It starts a stream only when a slot of the run
and one of its source are free, in the order of ``stack.yml``, so a slow
source never holds threads that another source could use.
"""

from __future__ import annotations

import queue
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from stack.config import StackConfig


@dataclass(frozen=True)
class StreamJob:
    """One stream of a run."""

    source: str
    stream: str


@dataclass(frozen=True)
class Bounds:
    """How many streams may sync at once: in all, and per source."""

    max_parallel: int
    per_source: dict[str, int]

    @classmethod
    def of(cls, config: StackConfig) -> Bounds:
        return cls(
            config.max_parallel_streams,
            {name: source.concurrency for name, source in config.sources.items()},
        )

    def fits(self, job: StreamJob, running: Counter[str]) -> bool:
        return running.total() < self.max_parallel and running[job.source] < self.per_source.get(
            job.source, 1
        )


class Handle(Protocol):
    """What starting a job returns: a future (``concurrent.futures`` or Prefect's)."""

    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...


H = TypeVar("H", bound=Handle)


def run_bounded(
    jobs: Sequence[StreamJob], bounds: Bounds, start: Callable[[StreamJob], H]
) -> Iterator[tuple[StreamJob, H]]:
    """Start ``jobs`` within ``bounds``; yield each with its handle once it finished.

    Args:
        jobs: the streams, in the order they should start.
        bounds: the limits.
        start: starts one job and returns its future without waiting for it.

    Returns:
        (job, finished handle) pairs in the order the jobs finish.
    """
    pending = list(jobs)
    running: Counter[str] = Counter()
    handles: dict[StreamJob, H] = {}
    finished: queue.SimpleQueue[StreamJob] = queue.SimpleQueue()
    while pending or running.total():
        for job in list(pending):
            if not bounds.fits(job, running):
                continue
            pending.remove(job)
            running[job.source] += 1
            handles[job] = start(job)
            handles[job].add_done_callback(_reporter(finished, job))
        done = finished.get()
        running[done.source] -= 1
        yield done, handles.pop(done)


def _reporter(finished: queue.SimpleQueue[StreamJob], job: StreamJob) -> Callable[[Any], None]:
    """A done-callback that puts ``job`` on ``finished`` (whatever future it is given)."""
    return lambda _: finished.put(job)
