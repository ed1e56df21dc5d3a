"""What the run ledger says a CDC source's replication slot holds back, for
``replication_lag`` checks (:func:`stack.transform.checks.run_checks`).

Every checkpoint of a PostgreSQL CDC read reports the WAL the source's slot holds back,
and the ledger keeps the last figure of each stream's run (``_mds_runs``,
``replication_lag_bytes``). The streams of a source share its slot, so the figure is
the source's: that of its latest run, the largest of that run's streams (each measured
the slot at its own last checkpoint).
"""

from __future__ import annotations

from stack.load import ledger
from stack.transform.checks import SourceLag
from stack.warehouse import Warehouse


def ledger_replication_lag(wh: Warehouse, pipeline: str) -> SourceLag:
    """``(source, region) -> bytes``: the WAL the source's slot held back at the latest
    run of ``pipeline`` that recorded it; None when none did (no run yet, or not a CDC
    source). A stream's latest run that recorded nothing (it failed before its first
    checkpoint) leaves that stream out."""

    def lag(source: str, region: str) -> int | None:
        if wh.columns(wh.meta_schema, ledger.RUNS_TABLE) is None:
            return None
        recorded = [
            run
            for run in ledger.latest_runs(wh, pipeline).to_pylist()
            if (run["source"], run["region"]) == (source, region)
            and run["replication_lag_bytes"] is not None
        ]
        if not recorded:
            return None
        newest = max(recorded, key=lambda run: run["started_at"])["run_id"]
        return max(run["replication_lag_bytes"] for run in recorded if run["run_id"] == newest)

    return lag
