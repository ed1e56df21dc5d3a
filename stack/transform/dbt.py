"""Run the dbt project in-process and report per-node results.

Provides:

- ``run_dbt(project_dir, output, args, vars=None, env=None)``: one dbt invocation through
  ``dbt.cli.main.dbtRunner``. The profile (profile ``mdstack``, target ``mdstack``) is rendered
  from ``output`` into a private temporary directory, never into the project. Returns a
  ``DbtRun`` of ``NodeResult``s; raises ``TransformError`` when dbt itself crashes and
  ``WarehouseBusy`` when another process holds the DuckDB catalog (a failing model or test
  is a result, not an exception).
- ``selection(changed)``: which dbt nodes a run must rebuild, given the streams that changed
  (``source:shop.orders+``), in one invocation.
- ``duckdb_output(warehouse_dir)``: the dbt-duckdb profile output for a DuckLake warehouse
  directory (``catalog.ducklake``, ``data/``, ``.extensions/``), attached as ``lake``.

Credentials reach dbt as ``DBT_ENV_SECRET_*`` environment variables (``env``), which dbt
scrubs from its logs; the profile refers to them with ``{{ env_var('DBT_ENV_SECRET_...') }}``.
No Prefect here: ``flows/`` wraps these calls in tasks.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stack.errors import TransformError, WarehouseBusy

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

log = logging.getLogger(__name__)

PROFILE_NAME = "mdstack"
"""Profile and target name the project's ``dbt_project.yml`` expects."""

FAILED_STATUSES = frozenset({"error", "fail", "runtime error", "partial success"})
"""Node statuses that make a run fail (``warn`` and ``skipped`` do not count)."""

_STREAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# dbt keeps global state (flags, adapters, event manager) and run_dbt swaps os.environ:
# one invocation at a time per process.
_DBT_LOCK = threading.Lock()


@dataclass(frozen=True)
class NodeResult:
    """What dbt reported for one node (model, test, snapshot, seed, source freshness)."""

    unique_id: str
    name: str
    resource_type: str
    status: str
    seconds: float
    rows_affected: int | None
    message: str | None
    compiled_path: str | None

    @property
    def failed(self) -> bool:
        """True when the status is one of ``FAILED_STATUSES``."""
        return self.status in FAILED_STATUSES


@dataclass(frozen=True)
class DbtRun:
    """One dbt invocation: the arguments it got, whether it succeeded, each node's result."""

    args: tuple[str, ...]
    success: bool
    nodes: tuple[NodeResult, ...]

    @property
    def command(self) -> str:
        """The dbt command without its options: ``build``, ``source freshness``."""
        words = itertools.takewhile(lambda arg: not arg.startswith("-"), self.args)
        return " ".join(words) or "dbt"

    @property
    def failures(self) -> tuple[NodeResult, ...]:
        """Nodes that errored or failed (models, snapshots, tests at severity error)."""
        return tuple(node for node in self.nodes if node.failed)

    @property
    def warnings(self) -> tuple[NodeResult, ...]:
        """Nodes that passed with a warning (tests at severity warn, stale sources)."""
        return tuple(node for node in self.nodes if node.status == "warn")


@dataclass(frozen=True)
class Selection:
    """The dbt nodes a run must rebuild, from the streams that changed.

    ``full_refresh`` holds the selectors of streams reloaded with a full refresh,
    ``incremental`` those of streams that only received new rows or deletes.
    """

    full_refresh: tuple[str, ...]
    incremental: tuple[str, ...]

    def args(self) -> list[str]:
        """dbt arguments to append to ``build``: one invocation for everything selected.

        One invocation, because a test spanning two streams (a relationship between
        order items and products) needs both parents built before it runs. When any
        stream was fully refreshed the invocation gets ``--full-refresh``, so
        incremental models downstream of it are rebuilt from scratch.

        Returns:
            e.g. ``["--select", "source:shop.orders+", "source:shop.products+",
            "--full-refresh"]``.
        """
        args = ["--select", *sorted((*self.incremental, *self.full_refresh))]
        return [*args, "--full-refresh"] if self.full_refresh else args

    def freshness_args(self) -> list[str]:
        """dbt arguments to append to ``source freshness``: the changed streams' sources.

        Returns:
            e.g. ``["--select", "source:shop.orders", "source:shop.products"]``.
        """
        sources = (s.removesuffix("+") for s in (*self.incremental, *self.full_refresh))
        return ["--select", *sorted(sources)]


def selection(changed: Mapping[str, Mapping[str, bool]]) -> Selection | None:
    """Select the dbt nodes downstream of the streams that changed this run.

    Args:
        changed: source name -> stream name -> whether it was fully refreshed this run
            (``{"shop": {"orders": False, "products": True}}``). Streams that did not
            change are absent. Source names are the dbt sources' names.

    Returns:
        A ``Selection`` (see ``Selection.args()``), or None when nothing changed
        and dbt can be skipped.

    Raises:
        ValueError: a stream or source name is not a plain identifier.
    """
    pairs = [
        (src, stream, full) for src, streams in changed.items() for stream, full in streams.items()
    ]
    for name in {n for src, stream, _ in pairs for n in (src, stream)}:
        if not _STREAM_NAME.match(name):
            raise ValueError(f"not a dbt source or table name: {name!r}")
    if not pairs:
        return None

    def selectors(full: bool) -> tuple[str, ...]:
        return tuple(
            f"source:{src}.{stream}+" for src, stream, was_full in sorted(pairs) if was_full is full
        )

    return Selection(full_refresh=selectors(True), incremental=selectors(False))


def run_dbt(
    project_dir: Path,
    output: Mapping[str, Any],
    args: Sequence[str],
    vars: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    target_path: Path | None = None,
    log_path: Path | None = None,
) -> DbtRun:
    """Run one dbt command in-process against a generated profile.

    Args:
        project_dir: the dbt project (``dbt_project/``).
        output: the profile output (``Warehouse.dbt_output()``). Secrets
            should appear as ``{{ env_var('DBT_ENV_SECRET_...') }}`` with values in ``env``.
        args: the dbt command and its arguments, e.g. ``["build", "--select", "x+"]``;
            without ``--profiles-dir``, ``--project-dir`` or ``--vars``, which are added here.
        vars: dbt vars, passed as ``--vars`` JSON.
        env: environment variables set for the duration of the call, then restored.
        target_path: where dbt writes artifacts (default: the project's ``target/``).
            Give separate paths to runs that may overlap.
        log_path: where dbt writes ``dbt.log`` (default: the project's ``logs/``).

    Returns:
        The invocation's ``DbtRun``; ``success`` is False when any node failed.

    Raises:
        TransformError: dbt itself failed (project or profile invalid, crash); no node ran.
        WarehouseBusy: another process holds the DuckDB catalog (retryable).
    """
    project = Path(project_dir).resolve()
    with (
        _DBT_LOCK,
        tempfile.TemporaryDirectory(prefix="mdstack-dbt-") as profiles_dir,
        _environ(env or {}),
    ):
        _write_profile(Path(profiles_dir), output)
        full_args = [*args, *_dbt_options(profiles_dir, project, vars, target_path, log_path)]
        started = time.monotonic()
        try:
            res = _invoke(full_args)
        finally:
            if output.get("type") == "duckdb":
                _release_duckdb()
    command = " ".join(args[:1]) or "dbt"
    if res.exception is not None:
        _raise_for(command, res.exception)
    run = DbtRun(args=tuple(args), success=bool(res.success), nodes=_node_results(res.result))
    _log_summary(command, run, time.monotonic() - started)
    return run


def _dbt_options(
    profiles_dir: str,
    project: Path,
    vars: Mapping[str, Any] | None,
    target_path: Path | None,
    log_path: Path | None,
) -> list[str]:
    """The options :func:`run_dbt` adds to every command."""
    options = [
        "--profiles-dir",
        profiles_dir,
        "--project-dir",
        str(project),
        "--vars",
        json.dumps(dict(vars or {}), default=str),
        "--no-send-anonymous-usage-stats",
    ]
    if target_path is not None:
        options += ["--target-path", str(target_path)]
    if log_path is not None:
        options += ["--log-path", str(log_path)]
    return options


def _raise_for(command: str, exc: BaseException) -> None:
    """Translate the exception dbtRunner caught (it catches everything) at one boundary."""
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        raise exc
    if _is_lock_conflict(exc):
        raise WarehouseBusy(
            f"dbt {command} could not open the warehouse: another process holds it",
            hint="a DuckDB-file catalog allows one process at a time; retry when it is done",
        ) from exc
    raise TransformError(
        f"dbt {command} did not run: {type(exc).__name__}: {exc}",
        hint="check dbt_project/ and the generated profile; dbt.log has the details",
    ) from exc


def _is_lock_conflict(exc: BaseException) -> bool:
    """True when DuckDB refused the catalog file because another process has it locked."""
    import duckdb

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, duckdb.IOException) and "lock" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False


def _invoke(args: list[str]) -> Any:
    """Call dbtRunner; imported here because importing dbt takes seconds."""
    from dbt.cli.main import dbtRunner

    return dbtRunner().invoke(args)


def _release_duckdb() -> None:
    """Close dbt-duckdb's process-wide DuckDB instance once dbt is done.

    dbt-duckdb keeps one DuckDB instance (with the lake attached) alive between invocations;
    a DuckDB-file catalog can be open only once, so the warehouse adapter could not attach
    it again in this process. Dropping the cached environment closes the connection.
    """
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    DuckDBConnectionManager.close_all_connections()


def _write_profile(profiles_dir: Path, output: Mapping[str, Any]) -> None:
    profile = {PROFILE_NAME: {"target": PROFILE_NAME, "outputs": {PROFILE_NAME: dict(output)}}}
    path = profiles_dir / "profiles.yml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    path.chmod(0o600)


@contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore (or remove) each one."""
    saved = {key: os.environ.get(key) for key in env}
    try:
        os.environ.update(env)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _node_results(result: Any) -> tuple[NodeResult, ...]:
    """Per-node results of build/run/test/seed/snapshot/source freshness; () for others."""
    return tuple(_node_result(item) for item in getattr(result, "results", None) or ())


def _node_result(item: Any) -> NodeResult:
    node = item.node
    response = item.adapter_response or {}
    rows = response.get("rows_affected")
    age = getattr(item, "age", None)  # source freshness: seconds since the newest loaded_at
    return NodeResult(
        unique_id=node.unique_id,
        name=node.name,
        resource_type=_text(node.resource_type),
        status=_text(item.status),
        seconds=float(item.execution_time or 0.0),
        rows_affected=rows if isinstance(rows, int) and rows >= 0 else None,
        message=item.message or (None if age is None else f"newest row {age:.0f}s old"),
        compiled_path=getattr(node, "compiled_path", None),
    )


def _text(value: Any) -> str:
    """dbt's enums are str subclasses; keep their plain value."""
    return str(getattr(value, "value", value))


def _log_summary(command: str, run: DbtRun, seconds: float) -> None:
    log.info(
        "dbt %s: %d nodes, %d failed, %d warned in %.1fs",
        command,
        len(run.nodes),
        len(run.failures),
        len(run.warnings),
        seconds,
    )
    for node in run.failures:
        log.warning("dbt %s %s %s: %s", node.resource_type, node.name, node.status, node.message)
