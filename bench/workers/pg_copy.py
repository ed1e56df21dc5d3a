"""The floor without psql: ``COPY ... TO STDOUT`` read through psycopg and thrown away.

Usage: ``python pg_copy.py CONNINFO STATEMENT``.
"""

from __future__ import annotations

import sys

import psycopg
from _report import Stopwatch, emit


def main() -> None:
    conninfo, statement = sys.argv[1], sys.argv[2]
    size = 0
    with (
        Stopwatch() as sw,
        psycopg.connect(conninfo) as conn,
        conn.cursor() as cur,
        cur.copy(statement) as copy,
    ):
        for data in copy:
            size += len(data)
    emit(sw.seconds, 0, bytes=size)


if __name__ == "__main__":
    main()
