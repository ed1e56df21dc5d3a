"""Time every statement mdstack sends to its DuckDB warehouse (diagnosis only).

:func:`install` wraps ``DuckDBWarehouse.execute`` and ``.query`` in this process;
:func:`top` returns the statements by total time, grouped by their first words with
stream names folded, as ``[seconds, count, statement]``.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict

from stack.warehouse.duckdb import DuckDBWarehouse

_TIMES: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])


def _shape(statement: str) -> str:
    text = re.sub(r"\s+", " ", statement.strip())
    text = re.sub(r'"s\d{3}"', '"sNNN"', text)
    return text[:90]


def _timed(method):
    def wrapper(self, statement, params=None):
        started = time.perf_counter()
        try:
            return method(self, statement, params)
        finally:
            entry = _TIMES[_shape(statement)]
            entry[0] += time.perf_counter() - started
            entry[1] += 1

    return wrapper


def install() -> None:
    DuckDBWarehouse.execute = _timed(DuckDBWarehouse.execute)
    DuckDBWarehouse.query = _timed(DuckDBWarehouse.query)


def top(n: int = 12) -> list[list]:
    ranked = sorted(_TIMES.items(), key=lambda kv: -kv[1][0])[:n]
    return [[round(seconds, 3), count, text] for text, (seconds, count) in ranked]


def total() -> float:
    return sum(seconds for seconds, _ in _TIMES.values())
