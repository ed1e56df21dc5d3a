"""Repairs made by hand: a stream's state set or reset, and full refreshes.

Each one holds the stream's lock, so it never races a run of the stream, and writes
its row of ``_mds_state_audit`` (who, what, the state before and after) in the
transaction that changes the state: the warehouse alone says who moved a stream's
position, and when. None of them touches the stream's rows but the full refresh,
which replaces them through the engine's one atomic replacement
(:class:`~stack.load.staged.Replacement`).
"""

from __future__ import annotations

import getpass
import os

from connectors.base import State
from stack.load import ledger
from stack.load.ledger import StateChange, StreamKey
from stack.load.plan import utcnow
from stack.load.staged import Replacement
from stack.warehouse.base import Warehouse

MANUAL_RUN = "manual"
"""The run id stored with a state set by hand (``_mds_state.run_id``)."""


def current_user() -> str:
    """Who is making the change: the operating system's user name.

    A container may run under a user id with no name (no ``passwd`` entry, no
    ``$USER``); the id then stands for it.
    """
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"


def set_state(wh: Warehouse, key: StreamKey, state: State) -> StateChange:
    """Store ``state`` as the stream's state (validated by the caller), audited.

    Raises:
        SyncConflict: a run of the stream is in progress.
    """
    with wh.lock(key.lock):
        ledger.ensure_tables(wh)
        change = StateChange(
            key, "set", current_user(), ledger.read_state(wh, key), state, utcnow()
        )
        with wh.transaction():
            ledger.write_state(wh, key, state, MANUAL_RUN, change.changed_at)
            ledger.record_change(wh, change)
    return change


def reset_state(wh: Warehouse, key: StreamKey) -> StateChange | None:
    """Forget the stream's state, audited: its next run reads from scratch. Its rows stay.

    Returns:
        The change, or None when the stream had no state (nothing is written).

    Raises:
        SyncConflict: a run of the stream is in progress.
    """
    with wh.lock(key.lock):
        ledger.ensure_tables(wh)
        before = ledger.read_state(wh, key)
        if before is None:
            return None
        change = StateChange(key, "reset", current_user(), before, None, utcnow())
        with wh.transaction():
            ledger.reset_state(wh, key)
            ledger.record_change(wh, change)
    return change


def full_refresh(wh: Warehouse, key: StreamKey, run_id: str) -> Replacement:
    """The replacement of every row of the stream's region, audited when it lands.

    Hand it to :func:`~stack.load.sync.sync_stream`: the stream is read from scratch
    and its region's rows replaced in one transaction, which also stores the read's
    state and this audit row.
    """
    user = current_user()
    swap = Replacement()

    def settle(entry: ledger.RunEntry) -> None:  # last in the replacing transaction
        after = ledger.read_state(wh, key)
        change = StateChange(key, "full_refresh", user, swap.prior, after, utcnow(), run_id)
        ledger.record_change(wh, change)

    swap.settle = settle
    return swap
