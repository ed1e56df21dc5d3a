"""The scenarios, in their numbered order, and what each is handed: a :class:`Context`.

Each scenario is a module with ``TITLE`` and ``run(ctx) -> ScenarioResult``, listed in
:data:`SCENARIOS` and imported only when selected.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench._measure import WORKERS
from bench._pg import PgServer
from bench._results import ScenarioResult

SCENARIOS: dict[str, str] = {
    "full_load": "bench.full_load",
    "incremental": "bench.incremental",
    "rest": "bench.rest",
    "airbyte": "bench.airbyte",
    "clone": "bench.clone",
    "orchestration": "bench.orchestration",
    "scaling": "bench.scaling",
    "cdc": "bench.cdc",
    "lake": "bench.lake",
    "history": "bench.history",
}
"""Scenario name -> module; numbered 1-10 in this order."""

QUICK = ("full_load", "incremental", "orchestration", "history")
"""What ``--quick`` runs: the mdstack rows of these, on small tables, once (scaling would
only repeat the full load; the others would only say they are skipped)."""


@dataclass
class Context:
    """What every scenario gets: the run's settings, a scratch folder, the PostgreSQL server."""

    runs: int
    rows: int | None
    quick: bool
    work: Path
    pg: PgServer
    peers: bool = True
    profile: bool = True
    log: Callable[[str], None] = print
    versions: dict[str, str] = field(default_factory=dict)

    def folder(self, *parts: str) -> Path:
        """A fresh, empty folder under the scratch folder."""
        path = self.work.joinpath(*parts)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    @staticmethod
    def python() -> str:
        """mdstack's own interpreter (workers that import mdstack run on it)."""
        return sys.executable

    @staticmethod
    def worker(name: str) -> str:
        return str(WORKERS / name)


def resolve(name: str) -> str:
    """A scenario by name or by its number (``1``..``10``)."""
    names = list(SCENARIOS)
    if name.isdigit() and 1 <= int(name) <= len(names):
        return names[int(name) - 1]
    if name not in SCENARIOS:
        raise SystemExit(
            f"unknown scenario {name!r}; choose from {', '.join(names)} or 1-{len(names)}"
        )
    return name


def run(name: str, ctx: Context) -> ScenarioResult:
    module = importlib.import_module(SCENARIOS[name])
    return module.run(ctx)
