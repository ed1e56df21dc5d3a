"""A bounded hand-over of record batches from the sync loop to one streaming write.

The sync loop pushes batches (it reads the source and fits each batch); a
warehouse that can pull a whole load in one statement wants a
``pa.RecordBatchReader``. A :class:`Feed` joins the two: the write runs in its
own thread and pulls batches from a queue of ``depth`` batches, so reading the
source and writing the warehouse overlap (both release the GIL while they work),
and at most ``depth`` batches wait in between: memory stays bounded whatever
the size of the load.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import pyarrow as pa

_END = object()
_ABORT = object()
_POLL_SECONDS = 0.05


class FeedAborted(Exception):
    """Raised inside the write's reader when the loop gives up: the write must fail."""


class Feed:
    """Batches of one schema, pulled by ``write(reader)`` in a thread of its own.

    Args:
        schema: the schema of every batch put.
        write: consumes the reader (an INSERT); runs in the feed's thread.
        depth: batches waiting at most between :meth:`put` and the write.
    """

    def __init__(
        self,
        schema: pa.Schema,
        write: Callable[[pa.RecordBatchReader], None],
        depth: int = 2,
    ) -> None:
        self._queue: queue.Queue[object] = queue.Queue(depth)
        self._failure: BaseException | None = None
        self._ended = False
        reader = pa.RecordBatchReader.from_batches(schema, self._batches())
        self._thread = threading.Thread(
            target=self._run, args=(write, reader), name="mdstack-write", daemon=True
        )
        self._thread.start()

    def put(self, batch: pa.RecordBatch) -> None:
        """Hand over one batch; waits while ``depth`` batches wait.

        Raises:
            The write's own error, as soon as the write has failed.
        """
        if not self._hand(batch):
            self.finish()  # the write stopped early: raise its failure

    def finish(self) -> None:
        """End the stream and wait for the write; raise its error if it failed."""
        self._hand(_END)
        self._thread.join()
        if self._failure is not None:
            raise self._failure

    def abort(self) -> None:
        """Make the write fail and wait for it (its error is expected, and dropped)."""
        self._hand(_ABORT)
        self._thread.join()

    def _hand(self, item: object) -> bool:
        """Queue ``item`` unless the write has ended; whether it was queued."""
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while True:
            item = self._queue.get()
            if item is _END:
                self._ended = True
                return
            if item is _ABORT:
                raise FeedAborted("the load was aborted")
            yield item

    def _run(self, write: Callable[[pa.RecordBatchReader], None], reader) -> None:
        try:
            write(reader)
            if not self._ended:
                raise RuntimeError("the write returned before the end of its batches")
        except BaseException as exc:  # handed to the loop's thread by finish()
            self._failure = exc
        finally:
            reader.close()
