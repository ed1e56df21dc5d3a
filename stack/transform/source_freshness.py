"""dbt's ``source freshness`` results as data check results.

:func:`freshness_from_sources_json` reads dbt's ``target/sources.json``;
:func:`freshness_from_nodes` the source nodes of a ``dbt source freshness``
:class:`~stack.transform.dbt.DbtRun`. Each source is one :class:`DataCheckResult`:
``pass`` passes, ``warn`` fails at severity warn, anything else at severity error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stack.transform.checks import DataCheckResult, describe_age
from stack.transform.dbt import NodeResult


def freshness_from_sources_json(
    sources: Mapping[str, Any] | str | Path, region: str = ""
) -> list[DataCheckResult]:
    """Check results from dbt's ``source freshness`` artifact (``target/sources.json``).

    ``pass`` passes; ``warn`` fails at severity warn; ``error`` and ``runtime error`` fail at
    severity error (a ``pass`` keeps the severity its ``error_after`` implies).
    """
    data = sources if isinstance(sources, Mapping) else json.loads(Path(sources).read_text())
    results = []
    for item in data.get("results", []):
        criteria = item.get("criteria") or {}
        limits = {k: criteria.get(k) or {} for k in ("warn_after", "error_after")}
        expected = ", ".join(
            f"{k.replace('_', ' ')} {v['count']} {v['period']}s"
            for k, v in limits.items()
            if v.get("count")
        )
        age = item.get("max_loaded_at_time_ago_in_s")
        message = (
            f"newest row {describe_age(age)} old"
            if age is not None
            else str(item.get("error") or "")
        )
        results.append(
            _source_result(item["unique_id"], item["status"], age, expected, message, region)
        )
    return results


def freshness_from_nodes(nodes: Iterable[NodeResult], region: str = "") -> list[DataCheckResult]:
    """Check results from the source nodes of a ``dbt source freshness`` :class:`DbtRun`;
    other nodes are ignored."""
    results = []
    for item in nodes:
        if item.resource_type != "source":
            continue
        message = item.message or f"source freshness {item.status}"
        results.append(_source_result(item.unique_id, item.status, None, "", message, region))
    return results


def _source_result(
    unique_id: str, status: str, age: float | None, expected: str, message: str, region: str
) -> DataCheckResult:
    source, _, name = unique_id.split(".", 2)[-1].partition(".")
    relation = f"{source}.{name}"
    return DataCheckResult(
        name=f"freshness:source:{relation}",
        table=relation,
        kind="freshness",
        severity="warn" if status == "warn" else "error",
        passed=status in ("pass", "success"),
        observed=None if age is None else round(float(age), 1),
        expected=expected or "dbt source freshness criteria",
        message=message,
        region=region,
    )
