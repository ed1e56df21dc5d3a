"""The decode cost of logical replication through SQL: peek slots, count what they emit.

Each slot is read with ``pg_logical_slot_peek_binary_changes`` up to the same LSN, with
pgoutput's options, and only the row count comes back: what the server spends decoding the
WAL (once per slot), without the client's decoding. Peeking consumes nothing, so every
round reads the same WAL. One slot is what a slot per source costs; N slots, one after the
other, what a slot per stream cost.

Usage: ``python pg_peek.py CONNINFO UPTO_LSN PUBLICATION SLOT [SLOT ...]``.
"""

from __future__ import annotations

import sys

import psycopg
from _report import Stopwatch, emit

PEEK = (
    "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, NULL,"
    " 'proto_version', '1', 'publication_names', %s)"
)


def main() -> None:
    conninfo, upto, publication, slots = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    messages = 0
    with psycopg.connect(conninfo, autocommit=True) as conn, Stopwatch() as sw:
        for slot in slots:
            row = conn.execute(PEEK, (slot, upto, publication)).fetchone()
            messages += int(row[0]) if row else 0
    emit(sw.seconds, messages, messages=messages, slots=len(slots))


if __name__ == "__main__":
    main()
