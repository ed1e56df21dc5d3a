"""Read a source ahead of the engine, in a thread of its own, a few messages at a time.

A sync opens the source and then does warehouse work before it takes the first
record (the ledger tables, the abandoned runs, the destination table): on
DuckLake that is some tenths of a second of commits, and the source's own start
(connecting, a first page) is as long. Reading ahead overlaps the two, and later
the source's reads with the engine's writes. At most ``depth`` messages wait, so
memory stays bounded; an error of the source is raised where the engine takes
the next message, as itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()
_POLL_SECONDS = 0.05


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """The messages of ``read()``, produced in a thread; iterate once, then :meth:`close`."""

    def __init__(self, read: Callable[[], Iterator[T]], depth: int = 2) -> None:
        self._queue: queue.Queue[object] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(read,), name="mdstack-read", daemon=True
        )
        self._thread.start()

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]

    def close(self) -> None:
        """Stop reading: the source is closed after the message it is reading now."""
        self._stop.set()
        while True:  # free a producer blocked on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _run(self, read: Callable[[], Iterator[T]]) -> None:
        try:
            messages = read()
            try:
                for message in messages:
                    if not self._put(message):
                        return
            finally:
                close = getattr(messages, "close", None)
                if close is not None:
                    close()  # a generator's cleanup (connections) runs in this thread
            self._put(_END)
        except BaseException as exc:  # handed to the engine's thread
            self._put(_Failure(exc))

    def _put(self, item: object) -> bool:
        """Queue ``item`` unless the engine stopped reading; whether it was queued."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False
