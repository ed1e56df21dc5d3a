"""The deployments a ``stack.yml`` asks for, as a pure plan that can be tested and diffed.

No Prefect here. :func:`plan_deployments` turns the config's ``deployments:``
section into :class:`PlannedDeployment` records: names, cron schedule and time
zone, default parameters (never secrets: references stay references inside
``stack.yml``, which the run reads), tags, work pool, a concurrency limit with
the ``ENQUEUE`` strategy, and event triggers. ``flows/deploy.py`` applies them
to a Prefect server; :func:`prefect_yaml` renders the same plan as a readable
``prefect.yaml``; :func:`diff` compares the plan with what a server holds
(``mdstack deploy --dry-run``).

::

    deployments:
      pipeline:   {per: region, work_pool: default}          # one per region
      crm-hourly: {sources: [crm], schedule: "0 * * * *"}    # one per region, crm only
      marts:      {after: [pipeline]}                        # when pipeline finished
      landing:    {on_file: {path: "landing/{{ region }}", pattern: "*.csv"}}

A deployment named ``<stack>-<key>-<region>`` (``-<source>`` with ``per:
source``) runs flow ``mdstack-pipeline``. Its schedule is the spec's
``schedule``, else the region's; its time zone the spec's, else the region's.

A deployment names no folder of the machine that deployed it: the flow is imported from
the installed package, ``config_path`` is the file's name inside the project folder, and
the one pull step (:func:`flows.project.enter_project`) enters that folder as the worker
sees it: the spec's ``project_dir``, else ``mdstack deploy --project-dir``, else the
worker's ``MDSTACK_PROJECT_DIR``. :func:`localhost_warnings` says where ``stack.yml``
names this machine for workers that run elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from connectors.config import ConfigProblem
from stack.config import StackConfig, render
from stack.config.orchestration import (
    DEFAULT_POOL_TYPE,
    DeploymentSpec,
    FileTrigger,
    check_cron,
    check_project_dir,
    check_timezone,
    default_deployments,
)
from stack.errors import ConfigError

__all__ = [
    "DeploymentSpec",
    "FileTrigger",
    "Landing",
    "PlannedDeployment",
    "check_cron",
    "check_timezone",
    "default_deployments",
    "diff",
    "localhost_warnings",
    "plan_deployments",
    "prefect_yaml",
]

FLOW_NAME = "mdstack-pipeline"
"""The pipeline flow's name (``flows/pipeline.py``)."""
ENTRYPOINT = "flows.pipeline.pipeline"
"""A module path: workers import the flow from the installed package, so the project folder
holds only ``stack.yml`` and what it names."""
PROJECT_STEP = "flows.project.enter_project"
"""The pull step that enters the project folder on the worker (``flows/project.py``)."""
PROJECT_DIR_ENV = "MDSTACK_PROJECT_DIR"
"""On a worker: the project folder, for deployments that name none."""
MANAGED_TAG = "mdstack"
"""Every deployment ``mdstack deploy`` makes carries this tag and ``mdstack:<stack name>``."""
FILE_LANDED = "mdstack.file.landed"
"""The event ``mdstack sensor`` emits for each file that lands in a watched folder."""
FLOW_RUN_COMPLETED = "prefect.flow-run.Completed"
COLLISION_STRATEGY = "ENQUEUE"
"""A run that finds its deployment's slots taken waits for one; it never races."""

_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class Landing:
    """A watched folder: absolute path and file-name glob."""

    folder: str
    pattern: str = "*"


@dataclass(frozen=True)
class PlannedDeployment:
    """One deployment as it should exist on the server."""

    key: str
    name: str
    region: str
    parameters: Mapping[str, Any]
    cron: str | None
    timezone: str
    work_pool: str
    work_queue: str | None
    concurrency: int
    tags: tuple[str, ...]
    paused: bool
    description: str
    work_pool_type: str = DEFAULT_POOL_TYPE
    after: tuple[str, ...] = ()
    """Full names (``flow/deployment``) whose completed runs start this one."""
    landing: Landing | None = None
    project_dir: str | None = None
    """The project folder as the workers see it; none: their ``MDSTACK_PROJECT_DIR``."""
    entrypoint: str = ENTRYPOINT
    flow: str = FLOW_NAME

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"

    def pull_steps(self) -> list[dict[str, Any]]:
        """What a worker does before the flow: enter the project folder."""
        given = {"directory": self.project_dir} if self.project_dir else {}
        return [{PROJECT_STEP: given}]

    def triggers(self) -> list[dict[str, Any]]:
        """Event triggers, in the shape of Prefect's ``DeploymentEventTrigger`` fields."""
        found = []
        for upstream in self.after:
            name = upstream.partition("/")[2]
            found.append(
                {
                    "name": f"mdstack: after {upstream}",
                    "enabled": True,
                    "expect": [FLOW_RUN_COMPLETED],
                    "match_related": {
                        "prefect.resource.role": "deployment",
                        "prefect.resource.name": name,
                    },
                }
            )
        if self.landing is not None:
            found.append(
                {
                    "name": f"mdstack: file landed in {self.landing.folder}",
                    "enabled": True,
                    "expect": [FILE_LANDED],
                    "match": {
                        "prefect.resource.id": "mdstack.file.*",
                        "mdstack.landing": self.landing.folder,
                    },
                }
            )
        return found

    def facts(self) -> dict[str, Any]:
        """What ``diff`` compares: the same shape :func:`flows.deploy` reads from a server."""
        return {
            "entrypoint": self.entrypoint,
            "pull_steps": self.pull_steps(),
            "parameters": dict(self.parameters),
            "schedules": [(self.cron, self.timezone, True)] if self.cron else [],
            "tags": sorted(self.tags),
            "work_pool": self.work_pool,
            "work_queue": self.work_queue or "default",
            "concurrency": (self.concurrency, COLLISION_STRATEGY),
            "paused": self.paused,
            "triggers": sorted(t["name"] for t in self.triggers()),
            "description": self.description,
        }


def plan_deployments(
    config: StackConfig,
    specs: Mapping[str, DeploymentSpec] | None = None,
    project_dir: str | None = None,
) -> list[PlannedDeployment]:
    """The deployments ``config`` asks for, in a stable order.

    Args:
        config: the loaded ``stack.yml``.
        specs: the ``deployments:`` section; default: the config's own, else
            :func:`default_deployments`.
        project_dir: the project folder as the workers see it, for specs that name
            none (``mdstack deploy --project-dir``).

    Raises:
        ConfigError: a key is not a slug, or names an unknown source, region or
            ``after`` deployment, or two deployments would share a name, or
            ``project_dir`` is not absolute.
    """
    specs = specs if specs is not None else config.deployments
    if project_dir is not None:
        try:
            check_project_dir(project_dir)
        except ConfigProblem as exc:
            raise ConfigError(str(exc), key="--project-dir", hint=exc.hint) from None
    plan: list[PlannedDeployment] = []
    for key, spec in specs.items():
        _check_spec(config, specs, key, spec)
        for region in spec.regions or tuple(config.region_names()):
            groups: list[tuple[str, ...] | None] = (
                [(s,) for s in spec.sources or config.sources] if spec.per == "source" else []
            )
            for sources in groups or [spec.sources]:
                plan.append(_plan_one(config, specs, key, spec, region, sources, project_dir))
    names = [d.name for d in plan]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"deployment names clash: {clash}", key="deployments")
    return plan


def _check_spec(
    config: StackConfig, specs: Mapping[str, DeploymentSpec], key: str, spec: DeploymentSpec
) -> None:
    where = f"deployments.{key}"
    if not _KEY.match(key):
        raise ConfigError(
            f"deployment key {key!r} is not a slug",
            key=where,
            hint="use lower-case letters, digits, - and _",
        )
    for source in spec.sources or ():
        config.source(source)
    for region in spec.regions or ():
        config.check_region(region)
    for upstream in spec.after:
        if "/" not in upstream and upstream not in specs:
            raise ConfigError(
                f"`after` names {upstream!r}, which is not a deployment of this file",
                key=f"{where}.after",
                hint=f"use one of: {', '.join(specs)}, or a full `flow/deployment` name",
            )


def _plan_one(
    config: StackConfig,
    specs: Mapping[str, DeploymentSpec],
    key: str,
    spec: DeploymentSpec,
    region: str,
    sources: tuple[str, ...] | None,
    project_dir: str | None,
) -> PlannedDeployment:
    declared = config.regions.get(region)
    suffix = f"-{sources[0]}" if spec.per == "source" and sources else ""
    parameters: dict[str, Any] = {"region": region, "config_path": config.path.name}
    if sources:
        parameters["sources"] = list(sources)
    if spec.target:
        parameters["target"] = spec.target
    tags = [MANAGED_TAG, f"{MANAGED_TAG}:{config.name}", f"region:{region}", f"deployment:{key}"]
    tags += [f"source:{s}" for s in sources or ()] if spec.per == "source" else []
    what = ", ".join(sources) if sources else "all sources"
    return PlannedDeployment(
        key=key,
        name=f"{config.name}-{key}-{region}{suffix}",
        region=region,
        parameters=parameters,
        cron=spec.schedule or (declared.schedule if declared else None),
        timezone=spec.timezone or (declared.timezone if declared else "UTC"),
        work_pool=spec.work_pool,
        work_pool_type=spec.work_pool_type,
        work_queue=spec.work_queue,
        concurrency=spec.concurrency,
        tags=tuple(dict.fromkeys([*tags, *spec.tags])),
        paused=spec.paused,
        description=spec.description or f"mdstack {config.name}: {key}, region {region} ({what})",
        after=tuple(_upstreams(config, specs, spec.after, region)),
        landing=_landing(config, spec.on_file, region),
        project_dir=spec.project_dir or project_dir,
    )


def _upstreams(
    config: StackConfig, specs: Mapping[str, DeploymentSpec], after: Sequence[str], region: str
) -> Iterable[str]:
    for upstream in after:
        if "/" in upstream:
            yield upstream
            continue
        other = specs[upstream]
        if other.regions and region not in other.regions:
            continue
        sources = other.sources or tuple(config.sources)
        suffixes = [f"-{s}" for s in sources] if other.per == "source" else [""]
        for suffix in suffixes:
            yield f"{FLOW_NAME}/{config.name}-{upstream}-{region}{suffix}"


def _landing(config: StackConfig, trigger: FileTrigger | None, region: str) -> Landing | None:
    if trigger is None:
        return None
    folder = render(trigger.path, config.template_vars(region))
    return Landing(str(config.resolve_path(Path(folder))), trigger.pattern)


def landings(plan: Iterable[PlannedDeployment]) -> list[Landing]:
    """The folders ``mdstack sensor`` watches: every planned deployment's ``on_file``."""
    return list(dict.fromkeys(d.landing for d in plan if d.landing is not None))


# -- localhost, seen from a worker elsewhere ----------------------------------------------

_LOCAL_HOST = re.compile(r"(?<![\w.-])(localhost|127(?:\.\d{1,3}){3}|\[::1\])(?![\w-])", re.I)
_LOCAL_SECTIONS = ("sources", "targets", "secrets", "bi")
"""The parts of ``stack.yml`` a run connects to: where a literal ``localhost`` matters."""


def _runs_elsewhere(plan_item: PlannedDeployment, project_root: Path) -> str | None:
    """Why the deployment's workers are not this machine in this folder, or None.

    The rule is deliberately plain: a pool that is not of type ``process`` runs flows in
    containers or pods; a ``project_dir`` other than this project's folder is another
    machine or a container (the compose worker's ``/mdstack``). A process pool without
    ``project_dir`` may be served from anywhere; it is not flagged.
    """
    if plan_item.work_pool_type != DEFAULT_POOL_TYPE:
        return f"pool {plan_item.work_pool!r} is of type {plan_item.work_pool_type}"
    if plan_item.project_dir and Path(plan_item.project_dir) != project_root.resolve():
        return f"project_dir {plan_item.project_dir} is not this folder"
    return None


def localhost_warnings(
    config: StackConfig, plan: Sequence[PlannedDeployment], api_url: str | None
) -> list[str]:
    """Warnings for addresses of this machine that workers elsewhere would read as theirs.

    Only keys are named, never values: a config string may hold a password.
    """
    reasons: dict[str, list[str]] = {}
    for planned in plan:
        reason = _runs_elsewhere(planned, config.root)
        if reason:
            reasons.setdefault(reason, []).append(planned.name)
    if not reasons:
        return []
    dumped = config.model_dump(mode="json", include=set(_LOCAL_SECTIONS))
    named = [f"{key} ({host})" for key, host in _local_hosts(dumped, ())]
    api_host = _LOCAL_HOST.search(api_url or "")
    where = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in reasons.items())
    warnings = []
    if named:
        warnings.append(
            f"deployments run on workers elsewhere ({where}), where localhost is the "
            f"worker's own machine or container, yet stack.yml names this machine at "
            f"{', '.join(named)}. Use an address the workers reach (a host name, or a "
            "compose service such as `postgres`), or a ${env:NAME} reference set on "
            "each worker."
        )
    if api_host:
        warnings.append(
            f"deployments run on workers elsewhere ({where}), and PREFECT_API_URL names "
            f"this machine ({api_host.group(1)}): start those workers with a "
            "PREFECT_API_URL of this server that they reach (the compose worker has "
            "http://prefect:4200/api)."
        )
    return warnings


def _local_hosts(value: Any, key: tuple[str, ...]) -> Iterable[tuple[str, str]]:
    """``(dotted key, host)`` for each string under ``value`` naming this machine."""
    if isinstance(value, str):
        found = _LOCAL_HOST.search(value)
        if found:
            yield ".".join(key), found.group(1)
    elif isinstance(value, Mapping):
        for name, item in value.items():
            yield from _local_hosts(item, (*key, str(name)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _local_hosts(item, (*key, str(index)))


# -- diff and prefect.yaml ----------------------------------------------------------------

Action = Literal["create", "update", "unchanged", "delete"]


@dataclass(frozen=True)
class Change:
    """What ``mdstack deploy`` does (or, with ``--dry-run``, would do) to one deployment."""

    action: Action
    name: str
    differences: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        detail = f" ({'; '.join(self.differences)})" if self.differences else ""
        return f"{self.action:<9} {self.name}{detail}"


def diff(
    plan: Sequence[PlannedDeployment], existing: Mapping[str, Mapping[str, Any]]
) -> list[Change]:
    """Compare the plan with the server's deployments of this stack (by name -> facts).

    Returns one change per planned deployment, then ``delete`` for each deployment
    the server has (tagged with this stack) that the plan no longer has.
    """
    changes = []
    for planned in plan:
        current = existing.get(planned.name)
        if current is None:
            when = f"{planned.cron} {planned.timezone}" if planned.cron else "on demand"
            changes.append(Change("create", planned.name, (when, f"pool {planned.work_pool}")))
            continue
        wanted = planned.facts()
        differences = tuple(
            f"{key}: {current.get(key)!r} -> {value!r}"
            for key, value in wanted.items()
            if _normal(current.get(key)) != _normal(value)
        )
        changes.append(Change("update" if differences else "unchanged", planned.name, differences))
    planned_names = {d.name for d in plan}
    changes += [Change("delete", name) for name in sorted(existing) if name not in planned_names]
    return changes


def _normal(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normal(v) for k, v in value.items()}
    return value


def prefect_yaml(plan: Sequence[PlannedDeployment], version: str) -> str:
    """``prefect.yaml`` for the plan: no build or push step, each deployment's pull step
    enters the project folder on the worker.

    ``prefect deploy --all`` from the project folder creates the same deployments as
    ``mdstack deploy`` (which remains the source of truth and rewrites this file).
    """
    document = {
        "name": "mdstack",
        "prefect-version": version,
        "build": None,
        "push": None,
        "pull": None,
        "deployments": [_yaml_deployment(d) for d in plan],
    }
    header = (
        "# Generated by `mdstack deploy` from stack.yml: edit stack.yml, not this file.\n"
        "# `prefect deploy --all` from this folder creates the same deployments.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, width=100)


def _yaml_deployment(d: PlannedDeployment) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": d.name,
        "description": d.description,
        "entrypoint": d.entrypoint,
        "parameters": dict(d.parameters),
        "tags": list(d.tags),
        "schedules": ([{"cron": d.cron, "timezone": d.timezone, "active": True}] if d.cron else []),
        "concurrency_limit": {"limit": d.concurrency, "collision_strategy": COLLISION_STRATEGY},
        "paused": d.paused,
        "work_pool": {"name": d.work_pool, "work_queue_name": d.work_queue},
        "pull": d.pull_steps(),
    }
    if d.triggers():
        entry["triggers"] = [{"type": "event", **t} for t in d.triggers()]
    return entry
