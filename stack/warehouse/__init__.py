"""Warehouse adapters behind one protocol; :func:`connect` picks one from the target.

Drivers are imported lazily, so DuckDB users never import Snowflake's
connector and the other way round.
"""

from __future__ import annotations

from stack.config import DuckDBTarget, StackConfig, Target
from stack.warehouse.base import Capabilities, Warehouse

__all__ = ["Capabilities", "Warehouse", "connect"]


def connect(config: StackConfig, target: Target) -> Warehouse:
    """An unopened warehouse for ``target``; open it with ``with``."""
    if isinstance(target, DuckDBTarget):
        from stack.warehouse.duckdb import DuckDBWarehouse

        return DuckDBWarehouse(
            config.resolve_path(target.path),
            target.threads,
            target.memory_limit,
            busy_timeout=target.busy_timeout,
        )
    from stack.warehouse.snowflake import SnowflakeWarehouse

    return SnowflakeWarehouse(target)
