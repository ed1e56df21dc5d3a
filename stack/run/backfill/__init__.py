"""Backfills: reload a window of history one partition (day, week or month) at a time.

No Prefect here. A partition run of one stream (:func:`sync_partition`):

1. renders the source's config with ``{{ start }}`` and ``{{ end }}`` (ISO dates;
   ``end`` is exclusive) on top of the region's variables, so a source can read
   just that window;
2. reads the source from scratch (never from the stream's saved state, which
   it leaves alone), keeps only the rows whose partition column (the stream's
   cursor, or ``backfill.partition_by``) falls inside the window, and stages them
   like any load (bounded memory, spilling to disk);
3. in **one** transaction deletes the region's rows of the window, writes the
   staged rows with the stream's sync mode, and marks the partition
   ``succeeded`` in ``_mds_backfills``.

So each partition overwrites exactly its own rows, atomically: a failure
anywhere (the source, a bad record, a frozen schema, a kill) leaves the
warehouse as it was, and readers never see a partition empty or half loaded.
The warehouse alone says which partitions are done (``_mds_backfills``); a
rerun skips those (:func:`pending_partitions`) and redoes the rest, and running
a partition twice leaves the same rows.

A partition must hold the same rows whenever it is read, so its column must
never change for a record. A deduped stream cut on a column that changes (its
``updated_at`` cursor) would lose every record updated since: its old row is
deleted with the window, and its current version lies outside it. Such a
backfill is refused before anything is read (:func:`check_partitioning`)
unless the source declares the column immutable (``StreamSpec.immutable``).

Only incremental streams are backfilled; full-refresh streams have no history
to cut into partitions and are skipped.

::

    partitions.py   what a partition is (a day, week or month), a source read cut to one
    ledger.py       _mds_backfills: which partitions are done
    load.py         one partition of one stream, in one transaction
    plan.py         what a backfill covers and what is left to run; running it
"""

from stack.config.orchestration import BackfillConfig
from stack.run.backfill.ledger import BACKFILLS_TABLE, PartitionEntry, done_partitions
from stack.run.backfill.load import PartitionResult, partition_column, sync_partition
from stack.run.backfill.partitions import Partition, WindowSource, cut, parse_day, partitions
from stack.run.backfill.plan import (
    BackfillOutcome,
    BackfillPlan,
    BackfillSelection,
    PartitionRun,
    backfill_streams,
    check_partitioning,
    forget_partitions,
    pending_partitions,
    run_backfill,
)

__all__ = [
    "BACKFILLS_TABLE",
    "BackfillConfig",
    "BackfillOutcome",
    "BackfillPlan",
    "BackfillSelection",
    "Partition",
    "PartitionEntry",
    "PartitionResult",
    "PartitionRun",
    "WindowSource",
    "backfill_streams",
    "check_partitioning",
    "cut",
    "done_partitions",
    "forget_partitions",
    "parse_day",
    "partition_column",
    "partitions",
    "pending_partitions",
    "run_backfill",
    "sync_partition",
]
