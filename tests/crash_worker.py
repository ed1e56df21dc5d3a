"""A sync process for the SIGKILL tests: syncs a long, fixed script until it is killed.

Usage::

    python tests/crash_worker.py ADAPTER LOCATION LIFE

opens the warehouse of ``tests.contract.ADAPTERS[ADAPTER]`` at LOCATION,
prints ``ready``, then syncs every stream of :data:`STREAMS` from its
committed state (a commit per checkpoint), starting with stream number LIFE
(mod their count) so that kills land in each of them, and prints ``done``.
It prints ``read`` after every batch: the test times its kills by these
markers, so they land inside the sync however slow the machine is.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.base import Message
from stack.load import EVERY_CHECKPOINT
from tests.contract import ADAPTERS, sync
from tests.scripted import ScriptedSource
from tests.strategies import change_rounds

STREAMS = (
    # (region, mode, deletes, schema): the staged paths (merge, deletes; versions) and the
    # direct one. A history table has columns of its own: it is another table.
    ("deduped", "incremental_deduped", "hard", "raw"),
    ("history", "incremental_deduped_history", "soft", "history"),
    ("appended", "incremental_append", "none", "raw"),
)
ROUNDS, ROWS = 8, 250


def script() -> list[Message]:
    """About 2,900 records and 500 tombstones in 8 checkpoints: the same on every call."""
    return [m for r in change_rounds(random.Random(20261122), ROUNDS, ROWS) for m in r]


def main(adapter: str, location: str, life: str) -> None:
    messages = script()
    order = int(life) % len(STREAMS)
    with ADAPTERS[adapter].open(Path(location)) as wh:
        print("ready", flush=True)
        for region, mode, deletes, schema in STREAMS[order:] + STREAMS[:order]:
            sync(
                wh,
                ScriptedSource(messages),
                mode=mode,
                deletes=deletes,
                region=region,
                schema=schema,
                run_id=f"life-{life}",
                policy=EVERY_CHECKPOINT,
                progress=lambda stream, rows: print("read", flush=True),
            )
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
