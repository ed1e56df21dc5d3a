"""The mdstack engine: config, sync, warehouses, dbt, run ledger and the CLI.

It runs, and is tested, as a plain library: nothing here imports Prefect.
"""
