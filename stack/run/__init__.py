"""A pipeline run: the steps around the engine, as plain functions (no Prefect here).

::

    pipeline.py     the steps of a run: sync a stream, transform (dbt, checks, publish),
                    refresh BI, emit lineage; run_pipeline chains them
    summary.py      what a run did: each stream's ledger entry, dbt, dashboards
    status.py       what the warehouse says of each stream: latest run, state, table
    replication_lag.py  what the ledger says a CDC source's slot holds back (for checks)
    scope.py        what the streams of one run share in one process (config, secrets,
                    warehouse, discovered sources); opening a source for a region
    parallel.py     which streams sync at once (max_parallel_streams, each source's
                    concurrency)
    backfill/       reloading history one partition (a day, week or month) at a time,
                    each in one transaction; the ledger of the partitions done
    deployments.py  the deployments stack.yml asks for, as a pure plan
    alerts.py       Slack, e-mail and webhook alerts at the end of a run
    report.py       a run's summary as Markdown

``flows/`` wraps these steps in Prefect tasks and flows.
"""
