"""The sync engine: each stream of a source into its own warehouse table, resumable.

::

    sync.py       sync_stream: read, fit, stage, commit at checkpoints, in bounded memory
    group.py      sync_group: the streams one read of a source serves (one replication slot),
                  each loaded as sync_stream loads it
    plan.py       what one sync is to do (StreamPlan), the run it belongs to (RunContext),
                  when to commit (CommitPolicy)
    schema.py     fitting each batch to the destination table by the schema policy
    staging.py    buffering batches and writing them to a staging table
    staged.py     committing staged rows per sync mode (merge, append, overwrite, deletes),
                  data, state and ledger row in one transaction
    streaming.py  the direct load: rows streamed straight into the table inside one open
                  transaction (append and overwrite without deletes)
    feed.py       the bounded hand-over of batches to a streaming write
    external.py   streams another system loads: the bookkeeping only
    ledger.py     the state, run, quarantine, state audit and dbt results tables in the
                  warehouse
    repair.py     changes by hand, audited: a state set or reset, a full refresh

The engine's entry points are re-exported here. Opening a source for a run (its
config rendered for the region, its secrets revealed) is :mod:`stack.run.scope`'s.
"""

from stack.load.plan import (
    EVERY_CHECKPOINT,
    CommitPolicy,
    RunContext,
    StreamPlan,
    plan_stream,
    utcnow,
)
from stack.load.sync import Progress, sync_stream

__all__ = [
    "EVERY_CHECKPOINT",
    "CommitPolicy",
    "Progress",
    "RunContext",
    "StreamPlan",
    "plan_stream",
    "sync_stream",
    "utcnow",
]
