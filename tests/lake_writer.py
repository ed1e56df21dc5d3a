"""One writer of a lake shared by several processes, for ``tests/test_lake_writers.py``.

Usage::

    python tests/lake_writer.py LOCATION SCHEMA MODE DELETES REGION SEED COMMITS

opens the ``duckdb-pg`` lake at LOCATION (its catalog in the PostgreSQL cluster named by
``MDSTACK_TEST_CATALOG_PORT``), prints ``ready``, then syncs the stream ``items`` of
region REGION into ``SCHEMA.items`` with a commit per checkpoint, in several runs, until
its :func:`script` of COMMITS rounds (seeded by SEED) is loaded; it prints ``read`` after
every batch. A run that fails because another writer got there first (WarehouseBusy: a
conflicting commit; SyncConflict: the stream's lock is still held, by a killed writer's
session the server has not ended yet) is rerun from the committed state, as a scheduler
would; each such rerun prints ``retry``. Any other error ends the process with it. At the
end it prints ``done`` and the reruns by error, as JSON.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.base import Message
from stack.errors import SyncConflict, WarehouseBusy
from stack.load import EVERY_CHECKPOINT
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.contract import open_pg_catalog, sync
from tests.scripted import ScriptedSource
from tests.strategies import change_rounds

ROWS = 30
"""Records inserted per round (plus updates, tombstones and re-inserts: see change_rounds)."""
ROUNDS_PER_RUN = 3
"""An incremental run reads this many more rounds (a commit each) than the one before it."""
RERUNS = 200
"""Reruns of one run before the writer gives up: a lock a killed writer held is released
as soon as the server notices its session is gone, and conflicts end when others commit."""
PAUSE = 0.05
"""Seconds between a failed run and its rerun."""


def script(seed: int, commits: int) -> list[list[Message]]:
    """The writer's rounds: [records, tombstones, records, checkpoint] each."""
    return change_rounds(random.Random(seed), commits, ROWS)


def reads(mode: str, commits: int) -> list[int]:
    """How many rounds each run's source says: an incremental run resumes from its committed
    state, so it loads the rounds past it; a full refresh (one commit a run) reads them all."""
    if mode.startswith("incremental"):
        return [*range(ROUNDS_PER_RUN, commits, ROUNDS_PER_RUN), commits]
    return list(range(1, commits + 1))


def rerun_while_busy(attempt: Callable[[int], object], reruns: Counter[str]) -> None:
    """Call ``attempt(try number)`` until it does not fail with WarehouseBusy or SyncConflict."""
    for number in range(RERUNS):
        try:
            attempt(number)
            return
        except (WarehouseBusy, SyncConflict) as exc:
            reruns[type(exc).__name__] += 1
            print("retry", type(exc).__name__, " ".join(str(exc).splitlines()[:3]), flush=True)
            time.sleep(PAUSE)
    raise RuntimeError(f"still failing after {RERUNS} reruns")


def one_run(
    wh: DuckDBWarehouse, messages: list[Message], run: str, options: dict, number: int
) -> None:
    sync(
        wh,
        ScriptedSource(messages),
        run_id=f"{run}-{number}",
        policy=EVERY_CHECKPOINT,
        progress=lambda stream, rows: print("read", flush=True),
        **options,
    )


def main(location: str, schema: str, mode: str, deletes: str, region: str, *numbers: str) -> None:
    seed, commits = map(int, numbers)
    rounds = script(seed, commits)
    reruns: Counter[str] = Counter()
    opened: list[DuckDBWarehouse] = []

    def open_lake(number: int) -> None:
        opened.append(open_pg_catalog(Path(location)).__enter__())

    rerun_while_busy(open_lake, reruns)  # the first writers race to create the catalog
    print("ready", flush=True)
    with opened[0] as wh:
        for run, said in enumerate(reads(mode, commits)):
            messages = [m for r in rounds[:said] for m in r]
            options = dict(mode=mode, deletes=deletes, region=region, schema=schema)
            rerun_while_busy(partial(one_run, wh, messages, f"{region}-{run}", options), reruns)
    print("done", json.dumps(reruns), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
