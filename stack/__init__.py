"""The mdstack engine: sources -> warehouse -> dbt -> BI, as a plain library.

From the bottom up, each package importing only from those before it::

    errors.py sql.py redact.py   the error tree, SQL building, masking secrets
    config/      the whole stack.yml schema and its loading
    secrets/     secret references and the Vault session that resolves them
    warehouse/   the Warehouse protocol, DuckDB on DuckLake, Snowflake
    transform/   dbt and the data checks
    load/        the sync engine: one stream into one table, the run ledger
    lineage/     OpenLineage events and the lineage page
    bi/          BI refresh hooks
    run/         a pipeline run: steps, scope, parallel streams, backfills, deployments,
                 alerts, report
    cli/         the ``mdstack`` command line

It runs, and is tested, as a plain library: nothing here imports Prefect.
"""
