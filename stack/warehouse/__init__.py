"""Warehouse adapters behind one protocol; :func:`connect` picks one from the target.

Drivers are imported lazily, so DuckDB users never import Snowflake's
connector and the other way round.
"""

from __future__ import annotations

from pathlib import Path

from stack.config.targets import DuckDBTarget, Target
from stack.warehouse.base import Capabilities, Warehouse

__all__ = ["Capabilities", "Warehouse", "connect"]


def connect(target: Target, root: Path) -> Warehouse:
    """An unopened warehouse for ``target``; open it with ``with``.

    Args:
        target: the chosen entry of ``targets:``.
        root: the folder a relative DuckDB ``path`` is relative to (``stack.yml``'s).
    """
    if isinstance(target, DuckDBTarget):
        from stack.warehouse.duckdb import DuckDBWarehouse

        path = target.path if target.path.is_absolute() else (root / target.path).resolve()
        bi_file = target.bi_file
        if bi_file is not None and not bi_file.path.is_absolute():
            bi_file = bi_file.model_copy(update={"path": (root / bi_file.path).resolve()})
        return DuckDBWarehouse(
            path,
            target.threads,
            target.memory_limit,
            busy_timeout=target.busy_timeout,
            catalog=target.catalog,
            data_path=target.data_path,
            storage=target.storage,
            bi_file=bi_file,
        )
    from stack.warehouse.snowflake import SnowflakeWarehouse

    return SnowflakeWarehouse(target)
