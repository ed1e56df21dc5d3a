"""``mdstack deploy``: apply the deployment plan of ``stack.yml`` to a Prefect server.

The plan is computed by :mod:`stack.run.deployments` (no Prefect there); this module
only talks to the server named by ``PREFECT_API_URL``:

* the work pools the plan uses are created if missing (``process`` type by default);
* each planned deployment is created or updated in place with
  ``flow.from_source(<project storage>, "flows.pipeline.pipeline").deploy(...)``:
  no Docker image and no git. The worker imports the flow from the installed package
  and its one pull step (:mod:`flows.project`) enters the project folder as that
  worker sees it; no folder of this machine is stored;
* deployments of this stack (tag ``mdstack:<name>``) that the plan no longer has
  are deleted, and ``prefect.yaml`` beside ``stack.yml`` is rewritten to match;
* each source gets a global concurrency limit of its ``concurrency`` slots
  (:mod:`flows.limits`), so the bound holds across flow runs.

Applying the same plan twice changes nothing (:func:`deploy` reports every
deployment ``unchanged``); ``dry_run=True`` only reads the server and returns
the changes it would make.
"""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import prefect
from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterTags,
    FlowFilter,
    FlowFilterName,
)
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import ObjectNotFound
from prefect.runner.storage import LocalStorage
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL
from prefect.workers.base import BaseWorker

from flows.limits import ensure_source_limits
from stack.config import load_config
from stack.errors import ConfigError
from stack.run import deployments as plans


class ProjectStorage(LocalStorage):
    """The project folder here (to load the flow at deploy time) and, as the pull step
    stored in the deployment, :func:`flows.project.enter_project` with the folder the
    workers see."""

    def __init__(self, local_root: Path, pull_steps: list[dict[str, Any]]) -> None:
        super().__init__(str(local_root))
        self._pull_steps = pull_steps

    def to_pull_step(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self._pull_steps


def api_url() -> str | None:
    """The Prefect server deployments go to (``PREFECT_API_URL``), None when unset."""
    return PREFECT_API_URL.value() or None


def deploy(
    config_path: str | Path | None = None,
    dry_run: bool = False,
    specs: dict[str, plans.DeploymentSpec] | None = None,
    project_dir: str | None = None,
) -> list[plans.Change]:
    """Create, update or delete deployments until the server matches ``stack.yml``.

    Args:
        config_path: the ``stack.yml`` (default: ``./stack.yml`` or ``$MDSTACK_CONFIG``).
        dry_run: only compare with the server and return what would change (with no
            server, the plan: every deployment a create).
        specs: the ``deployments:`` section (default: the config's own).
        project_dir: the project folder as the workers see it, for deployments whose
            spec names none (default: the worker's ``MDSTACK_PROJECT_DIR``).

    Returns:
        One change per planned deployment, plus ``delete`` for stale ones.
    """
    config = load_config(config_path)
    plan = plans.plan_deployments(config, specs, project_dir)
    if not PREFECT_API_URL.value():
        if dry_run:  # the plan alone: every deployment would be created
            return plans.diff(plan, {})
        raise ConfigError(
            "PREFECT_API_URL is not set: there is no Prefect server to deploy to",
            hint="start one (`prefect server start`) and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`; "
            "`mdstack deploy --dry-run` shows the plan without one",
        )
    with get_client(sync_client=True) as client:
        existing = read_existing(client, config.name)
        changes = plans.diff(plan, {name: facts for name, (_, facts) in existing.items()})
        if dry_run:
            return changes
        _make_changes(client, plan, changes, {n: i for n, (i, _) in existing.items()}, config.root)
        ensure_source_limits(client, config)
    write_prefect_yaml(config.root / "prefect.yaml", plan)
    return changes


def _make_changes(
    client: SyncPrefectClient,
    plan: list[plans.PlannedDeployment],
    changes: list[plans.Change],
    ids: dict[str, Any],
    local_root: Path,
) -> None:
    for pool, kind in dict.fromkeys((d.work_pool, d.work_pool_type) for d in plan):
        ensure_work_pool(client, pool, kind)
    for planned, change in zip(plan, changes, strict=False):
        if change.action != "unchanged":
            storage = ProjectStorage(local_root, planned.pull_steps())
            source = _done(Flow.from_source(source=storage, entrypoint=plans.ENTRYPOINT))
            apply(client, source, planned)
    for change in changes[len(plan) :]:  # delete: deployments of this stack no longer planned
        client.delete_resource_owned_automations(f"prefect.deployment.{ids[change.name]}")
        client.delete_deployment(ids[change.name])


def write_prefect_yaml(path: Path, plan: list[plans.PlannedDeployment]) -> Path:
    """Write ``prefect.yaml`` for ``plan`` (``prefect deploy --all`` makes the same)."""
    path.write_text(plans.prefect_yaml(plan, prefect.__version__))
    return path


def apply(client: SyncPrefectClient, source: Flow, planned: plans.PlannedDeployment) -> Any:
    """Create or update one deployment (``.deploy`` upserts by flow and name)."""
    deployment_id = _done(
        source.deploy(
            name=planned.name,
            work_pool_name=planned.work_pool,
            work_queue_name=planned.work_queue,
            schedules=[Cron(planned.cron, timezone=planned.timezone)] if planned.cron else None,
            parameters=dict(planned.parameters),
            tags=list(planned.tags),
            description=planned.description,
            concurrency_limit=ConcurrencyLimitConfig(
                limit=planned.concurrency,
                collision_strategy=ConcurrencyLimitStrategy(plans.COLLISION_STRATEGY),
            ),
            triggers=[DeploymentEventTrigger(**t) for t in planned.triggers()],
            paused=planned.paused,
            build=False,
            push=False,
            print_next_steps=False,
            ignore_warnings=True,
        )
    )
    if not planned.cron:  # an update without schedules keeps the old ones: drop them
        for schedule in client.read_deployment_schedules(deployment_id):
            client.delete_deployment_schedule(deployment_id, schedule.id)
    return deployment_id


def ensure_work_pool(client: SyncPrefectClient, name: str, kind: str) -> bool:
    """Create work pool ``name`` of type ``kind`` unless it exists; True if created."""
    try:
        client.read_work_pool(name)
        return False
    except ObjectNotFound:
        pass
    worker = BaseWorker.get_worker_class_from_type(kind)
    if worker is None:
        raise ConfigError(
            f"work pool {name!r} does not exist and type {kind!r} is unknown here",
            key="deployments.work_pool_type",
            hint=f"create it first: prefect work-pool create {name} --type {kind}",
        )
    template = worker.get_default_base_job_template()
    client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template))
    return True


def read_existing(client: SyncPrefectClient, stack: str) -> dict[str, tuple[Any, dict[str, Any]]]:
    """This stack's deployments on the server: name -> (id, facts as ``diff`` compares them)."""
    found = client.read_deployments(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[plans.FLOW_NAME])),
        deployment_filter=DeploymentFilter(
            tags=DeploymentFilterTags(all_=[f"{plans.MANAGED_TAG}:{stack}"])
        ),
    )
    return {d.name: (d.id, _facts(client, d)) for d in found}


def _facts(client: SyncPrefectClient, d: Any) -> dict[str, Any]:
    limit = d.global_concurrency_limit
    options = d.concurrency_options
    automations = client.read_resource_related_automations(f"prefect.deployment.{d.id}")
    return {
        "entrypoint": d.entrypoint,
        "pull_steps": d.pull_steps,
        "parameters": d.parameters,
        "schedules": [
            (getattr(s.schedule, "cron", None), getattr(s.schedule, "timezone", None), s.active)
            for s in d.schedules
        ],
        "tags": sorted(d.tags),
        "work_pool": d.work_pool_name,
        "work_queue": d.work_queue_name,
        "concurrency": (
            limit.limit if limit else None,
            options.collision_strategy.value if options else None,
        ),
        "paused": d.paused,
        "triggers": sorted(a.name for a in automations),
        "description": d.description,
    }


T = TypeVar("T")


def _done(value: T | Coroutine[Any, Any, T]) -> T:
    """The value of a Prefect method that runs sync or async by context (typed as either):
    called from sync code, as here, it returns the value itself."""
    if isinstance(value, Coroutine):
        value.close()
        raise TypeError("a Prefect call returned a coroutine in sync code")
    return value
