"""The transform step: dbt builds the models, then checks verify the data.

- ``dbt.py``: the dbt project run in-process (profile, node selection from the
  streams that changed, per-node results); its public names are re-exported here.
- ``checks.py``: data checks (freshness, volume, schema, values, reconcile,
  replication_lag) run on the warehouse before a publish.
- ``source_freshness.py``: dbt's ``source freshness`` results as check results.
- ``result.py``: what a run's transform step did (the build, the checks, the publish).

Nothing here reads the run ledger: what a reconcile check compares with is passed in
(:func:`stack.load.ledger.ledger_source_count` makes it), and so is a source's slot lag
(:func:`stack.run.replication_lag.ledger_replication_lag`).
"""

from stack.transform.dbt import (
    FAILED_STATUSES,
    PROFILE_NAME,
    DbtRun,
    NodeResult,
    Selection,
    TransformError,
    run_dbt,
    selection,
)

__all__ = [
    "FAILED_STATUSES",
    "PROFILE_NAME",
    "DbtRun",
    "NodeResult",
    "Selection",
    "TransformError",
    "run_dbt",
    "selection",
]
