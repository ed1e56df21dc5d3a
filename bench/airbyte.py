"""Scenario 4: Airbyte ``source-faker``, 200 k records (floor: the connector's own
``read`` to /dev/null; peer: PyAirbyte). Needs mdstack's Airbyte-connector adapter, which
is not built yet: until it exists the scenario says so and is skipped.
"""

from __future__ import annotations

from bench._results import ScenarioResult
from bench.scenarios import Context
from connectors import REGISTRY

TITLE = "4. Airbyte source-faker, 200,000 records"


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("airbyte", TITLE)
    if "airbyte" not in REGISTRY:
        result.skipped = (
            "not available yet: no `airbyte` connector in connectors.REGISTRY "
            "(the adapter running Airbyte protocol connectors such as source-faker)"
        )
    else:
        result.skipped = "not available yet: the airbyte connector exists; its bench is to come"
    return result
