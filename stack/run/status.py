"""What the warehouse says of each stream: its latest run, its stored state, its table.

:func:`stream_status` is what ``mdstack status`` prints and what colours the lineage
page (:func:`stack.lineage.write_lineage_page`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from stack import sql
from stack.config import load_config
from stack.load import ledger
from stack.load.ledger import RunEntry
from stack.load.names import Rename, stored_renames
from stack.run.pipeline import open_target, secrets_for
from stack.warehouse import Warehouse


@dataclass
class StreamStatus(RunEntry):
    """A stream's latest run in one region (its ``_mds_runs`` row), and what it left."""

    state: str | None = None
    """The stored state, as JSON text; None before the first committed checkpoint."""
    rows: int | None = None
    """Rows of the region in the stream's table; None when the table does not exist."""
    last_loaded_at: datetime | None = None
    """When the region's newest row was loaded."""
    renames: list[Rename] = field(default_factory=list)
    """The stream's fields loaded under another column name (per table, so every region's)."""


_FIELDS = tuple(f.name for f in fields(StreamStatus))


def stream_status(config_path: str | Path, target: str | None) -> list[StreamStatus]:
    """Per stream and region: the last run, its counts, the stored state, rows, freshness
    and the fields loaded under another name."""
    config = load_config(config_path)
    statuses = []
    with secrets_for(config) as resolver, open_target(config, target, resolver) as wh:
        ledger.ensure_tables(wh)
        for run in ledger.latest_runs(wh, config.name).to_pylist():
            declared = config.sources.get(run["source"])
            schema = declared.schema_ if declared is not None else None
            run |= _table_facts(wh, schema, run["stream"], run["region"])
            if schema is not None:
                run["renames"] = stored_renames(wh, schema, run["stream"])
            statuses.append(StreamStatus(**{k: v for k, v in run.items() if k in _FIELDS}))
    return statuses


def _table_facts(wh: Warehouse, schema: str | None, stream: str, region: str) -> dict[str, Any]:
    if schema is None or wh.columns(schema, stream) is None:
        return {"rows": None, "last_loaded_at": None}
    facts = wh.query(
        f"SELECT count(*) AS rows, max({sql.ident(sql.LOADED_AT)}) AS last_loaded_at "
        f"FROM {sql.table(schema, stream)} WHERE {sql.ident(sql.REGION)} = ?",
        [region],
    )
    return facts.to_pylist()[0]
