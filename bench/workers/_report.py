"""How a worker reports: one ``BENCH-RESULT {json}`` line on stdout, read by ``bench._measure``.

Workers run as scripts (``python bench/workers/x.py``), some in a peer's virtualenv
without mdstack installed, so this module imports only the standard library.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

PREFIX = "BENCH-RESULT "


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``: the work, imports excluded."""

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def emit(seconds: float, rows: int, **extra: Any) -> None:
    """Print the result line the parent parses (last such line wins)."""
    sys.stdout.write(PREFIX + json.dumps({"seconds": seconds, "rows": rows, **extra}, default=str))
    sys.stdout.write("\n")
    sys.stdout.flush()
