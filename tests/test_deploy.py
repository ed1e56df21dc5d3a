"""Orchestration: the deployment plan, `mdstack deploy` on a real Prefect server, a process
worker running scheduled deployments one at a time per region, retries, and sensors.

The slow tests share one Prefect server (``tests/servers/prefect_server.py``) and one worker; both
are stopped by pid at the end of the run.
"""

from __future__ import annotations

import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

import connectors
from stack.config import StackConfig, load_config
from stack.errors import ConfigError, ConnectorError, SourceUnavailable
from stack.run import deployments as plans
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import ROOT
from tests.counting_source import reads
from tests.servers.prefect_server import Worker, using_api, wait_for
from tests.servers.webhook_server import WebhookServer

POOL = "mdstack-test"
RUN_TIMEOUT = 420.0
"""Seconds a triggered run may take to finish (a worker subprocess on a loaded box)."""


def stack(folder: Path, sources: dict | None = None, regions: dict | None = None) -> Path:
    """A tiny stack.yml: the demo shop (a few orders a day, no dbt) or the given sources."""
    demo = {
        "connector": "demo",
        "config": {"seed": 3, "region": "{{ region }}", "history_days": 2, "orders_per_day": 5},
        "schema": "raw_shop",
        "streams": {"orders": {"sync": "incremental_deduped"}},
    }
    config = {
        "name": "shop",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(folder / "warehouse")}},
        "regions": regions
        or {
            "us": {"timezone": "America/New_York", "schedule": "0 6 * * *"},
            "eu": {"timezone": "Europe/Berlin", "schedule": "30 5 * * 1-5"},
        },
        "sources": sources or {"shop": demo},
    }
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def spec(**fields: Any) -> plans.DeploymentSpec:
    return plans.DeploymentSpec.model_validate(fields)


# -- the plan, without Prefect ------------------------------------------------------------


def two_source_config(tmp_path: Path) -> StackConfig:
    crm = {
        "connector": "postgres",
        "config": {
            "host": "db",
            "database": "crm",
            "user": "crm",
            "password": "${vault:kv/crm#password}",
        },
        "schema": "raw_crm",
        "streams": {"accounts": {}},
    }
    return load_config(stack(tmp_path, {"shop": load_shop(tmp_path), "crm": crm}))


def load_shop(tmp_path: Path) -> dict:
    return yaml.safe_load(stack(tmp_path).read_text())["sources"]["shop"]


def test_the_plan_has_one_deployment_per_region_and_source_as_asked(tmp_path):
    config = two_source_config(tmp_path)
    plan = plans.plan_deployments(
        config,
        {
            "pipeline": spec(work_pool=POOL),
            "crm-hourly": spec(sources=["crm"], schedule="0 * * * *", per="source"),
            "marts": spec(after=["pipeline"], regions=["eu"]),
            "landing": spec(on_file={"path": "landing/{{ region }}", "pattern": "*.csv"}),
        },
    )
    by_name = {d.name: d for d in plan}
    assert list(by_name) == [
        "shop-pipeline-us",
        "shop-pipeline-eu",
        "shop-crm-hourly-us-crm",
        "shop-crm-hourly-eu-crm",
        "shop-marts-eu",
        "shop-landing-us",
        "shop-landing-eu",
    ]
    us = by_name["shop-pipeline-us"]
    assert (us.cron, us.timezone, us.work_pool, us.concurrency) == (
        "0 6 * * *",
        "America/New_York",
        POOL,
        1,
    )
    assert us.parameters == {"region": "us", "config_path": "stack.yml"}
    assert us.tags == ("mdstack", "mdstack:shop", "region:us", "deployment:pipeline")
    assert us.facts()["concurrency"] == (1, "ENQUEUE")
    hourly = by_name["shop-crm-hourly-eu-crm"]
    assert (hourly.cron, hourly.timezone) == ("0 * * * *", "Europe/Berlin")
    assert hourly.parameters["sources"] == ["crm"] and "source:crm" in hourly.tags
    assert "vault" not in str([d.parameters for d in plan])  # never a secret, nor a reference
    (after,) = by_name["shop-marts-eu"].triggers()
    assert after["expect"] == ["prefect.flow-run.Completed"]
    assert after["match_related"] == {
        "prefect.resource.role": "deployment",
        "prefect.resource.name": "shop-pipeline-eu",
    }
    (landing,) = by_name["shop-landing-us"].triggers()
    assert landing["expect"] == ["mdstack.file.landed"]
    assert landing["match"]["mdstack.landing"] == str(tmp_path / "landing" / "us")
    assert plans.landings(plan) == [
        plans.Landing(str(tmp_path / "landing" / "us"), "*.csv"),
        plans.Landing(str(tmp_path / "landing" / "eu"), "*.csv"),
    ]


def test_prefect_yaml_mirrors_the_plan_and_names_no_folder_of_this_machine(tmp_path):
    config = load_config(stack(tmp_path))
    specs = {"pipeline": spec(after=["pipeline"]), "moved": spec(project_dir="/mdstack")}
    plan = plans.plan_deployments(config, specs)
    text = plans.prefect_yaml(plan, "3.8.8")
    assert str(tmp_path) not in text and str(ROOT) not in text
    document = yaml.safe_load(text)
    assert document["build"] is None and document["push"] is None
    first, moved = document["deployments"][0], document["deployments"][2]
    assert first["pull"] == [{"flows.project.enter_project": {}}]  # the worker's env says
    assert moved["pull"] == [{"flows.project.enter_project": {"directory": "/mdstack"}}]
    assert first["name"] == "shop-pipeline-us"
    assert first["parameters"] == {"region": "us", "config_path": "stack.yml"}
    assert first["entrypoint"] == "flows.pipeline.pipeline"
    assert first["schedules"] == [
        {"cron": "0 6 * * *", "timezone": "America/New_York", "active": True}
    ]
    assert first["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert first["triggers"][0]["type"] == "event"


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ({"p": {"after": ["nope"]}}, "not a deployment of this file"),
        ({"p": {"sources": ["nope"]}}, "unknown source"),
        ({"P Q": {}}, "not a slug"),
    ],
)
def test_a_wrong_plan_names_the_key(tmp_path, specs, message):
    config = load_config(stack(tmp_path))
    with pytest.raises(ConfigError, match=message):
        plans.plan_deployments(config, {k: spec(**v) for k, v in specs.items()})


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"schedule": "every day"}, "not a cron"), ({"timezone": "Mars/Olympus"}, "time zone")],
)
def test_a_wrong_schedule_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        spec(**fields)


def test_the_diff_says_create_update_unchanged_and_delete(tmp_path):
    config = load_config(stack(tmp_path))
    plan = plans.plan_deployments(config)
    us, eu = plan
    existing = {
        us.name: us.facts(),
        eu.name: {**eu.facts(), "schedules": [("0 7 * * *", "Europe/Berlin", True)]},
        "shop-pipeline-apac": {},
    }
    changes = plans.diff(plan, existing)
    assert [(c.action, c.name) for c in changes] == [
        ("unchanged", "shop-pipeline-us"),
        ("update", "shop-pipeline-eu"),
        ("delete", "shop-pipeline-apac"),
    ]
    assert "schedules" in changes[1].differences[0]


SECTIONS = """
alerts:
  - {type: slack, webhook: "${vault:kv/slack#webhook}", on: [failure]}
  - {type: email, to: data-team@example.com, smtp: "${vault:kv/smtp#url}", on: [failure, success]}
deployments:
  pipeline: {per: region, work_pool: default}
  shop-hourly: {sources: [shop], schedule: "0 * * * *", per: region}
backfill: {grain: week, partition_by: {shop.orders: ordered_at}}
"""


def test_orchestration_sections_of_stack_yml_and_their_defaults(tmp_path):
    base = yaml.safe_load(stack(tmp_path).read_text()) | {"path": tmp_path / "stack.yml"}
    config = StackConfig.model_validate(base | yaml.safe_load(SECTIONS))
    assert [d.name for d in plans.plan_deployments(config)] == [
        "shop-pipeline-us",
        "shop-pipeline-eu",
        "shop-shop-hourly-us",
        "shop-shop-hourly-eu",
    ]
    assert [a.on for a in config.alerts] == [("failure",), ("failure", "success")]
    assert config.backfill.partition_by == {"shop.orders": "ordered_at"}
    bare = StackConfig.model_validate(base)
    assert [d.key for d in plans.plan_deployments(bare)] == ["pipeline", "pipeline"]
    assert bare.alerts == [] and bare.backfill.grain == "day"
    none = StackConfig.model_validate(base | {"deployments": {}})
    assert plans.plan_deployments(none) == []


def test_only_retryable_errors_are_retried():
    from prefect.states import Failed

    from flows.pipeline import SYNC_RETRIES, retryable, sync_stream

    def verdict(error: BaseException) -> bool:
        return retryable(sync_stream, None, Failed(data=error))

    assert verdict(SourceUnavailable("503", source="crm"))
    assert not verdict(ConnectorError("bad credentials", source="crm"))
    assert not verdict(RuntimeError("unknown"))
    assert not verdict(TimeoutError("a task timeout is not an error the source marked"))
    assert sync_stream.retries == SYNC_RETRIES == 3
    assert sync_stream.retry_delay_seconds == [10, 20, 40]
    assert sync_stream.retry_jitter_factor == 0.5
    assert sync_stream.timeout_seconds is None  # in a worker thread it could not interrupt


def test_the_pull_step_enters_the_named_folder_else_the_one_the_worker_names(tmp_path, monkeypatch):
    from flows.project import enter_project

    monkeypatch.chdir(tmp_path)  # the step changes folder; monkeypatch changes it back
    named, from_env = tmp_path / "named", tmp_path / "from-env"
    named.mkdir(), from_env.mkdir()
    monkeypatch.setenv("MDSTACK_PROJECT_DIR", str(from_env))
    assert enter_project(str(named)) == {"directory": str(named.resolve())}
    assert Path.cwd() == named.resolve()
    assert enter_project() == {"directory": str(from_env.resolve())}
    with pytest.raises(ConfigError, match=r"gone \(project_dir\) does not exist on this worker"):
        enter_project(str(tmp_path / "gone"))
    monkeypatch.delenv("MDSTACK_PROJECT_DIR")
    with pytest.raises(ConfigError, match="names no project folder") as caught:
        enter_project()
    assert "start the worker with MDSTACK_PROJECT_DIR=" in str(caught.value)


def test_a_relative_project_dir_is_refused(tmp_path):
    with pytest.raises(ValueError, match="project_dir 'mdstack' is not absolute"):
        spec(project_dir="mdstack")
    with pytest.raises(ConfigError, match=r"--project-dir: project_dir '\.' is not absolute"):
        plans.plan_deployments(load_config(stack(tmp_path)), project_dir=".")


def localhost_stack(folder: Path, deployments: dict | None = None) -> Path:
    """A stack whose CRM database is on this machine (and whose password says so too)."""
    crm = {
        "connector": "postgres",
        "config": {
            "host": "localhost",
            "database": "crm",
            "user": "crm",
            "password": "hunter2@localhost",
        },
        "schema": "raw_crm",
        "streams": {"accounts": {}},
    }
    path = stack(folder, {"crm": crm}, {"us": {"timezone": "UTC"}})
    if deployments is not None:
        path.write_text(path.read_text() + yaml.safe_dump({"deployments": deployments}))
    return path


def dry_run(path: Path, *flags: str) -> str:
    """What `mdstack deploy --dry-run` prints (no server), whitespace made single spaces."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from stack.cli import app

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(app, ["deploy", "--dry-run", "--config", str(path), *flags])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_localhost_is_flagged_only_for_workers_that_run_elsewhere(tmp_path):
    path = localhost_stack(tmp_path)
    assert "warning" not in dry_run(path)  # process pool, no project_dir: maybe this machine
    assert "warning" not in dry_run(path, "--project-dir", str(tmp_path))  # this very folder
    moved = dry_run(path, "--project-dir", "/mdstack")
    assert (
        "warning: deployments run on workers elsewhere (shop-pipeline-us: project_dir /mdstack "
        "is not this folder), where localhost is the worker's own machine or container, yet "
        "stack.yml names this machine at sources.crm.config.host (localhost), "
        "sources.crm.config.password (localhost)." in moved
    )
    assert "${env:NAME} reference set on each worker" in moved
    assert "hunter2" not in moved  # keys are named, never values
    assert "create shop-pipeline-us" in moved

    docker = localhost_stack(tmp_path, {"pipeline": {"work_pool": "k", "work_pool_type": "docker"}})
    assert "pool 'k' is of type docker), where localhost" in dry_run(docker)


def test_a_local_prefect_api_url_is_flagged_for_workers_elsewhere(tmp_path):
    config = load_config(stack(tmp_path))  # its addresses are all files
    here = plans.plan_deployments(config)
    moved = plans.plan_deployments(config, project_dir="/srv/shop")
    api = "http://127.0.0.1:4200/api"
    assert plans.localhost_warnings(config, moved, "http://prefect:4200/api") == []
    assert plans.localhost_warnings(config, here, api) == []
    (warning,) = plans.localhost_warnings(config, moved, api)
    assert "PREFECT_API_URL names this machine (127.0.0.1)" in warning
    assert "start those workers with a PREFECT_API_URL of this server that they reach" in warning


# -- on a real Prefect server -------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(prefect_api, tmp_path_factory):
    """A process worker on the test pool, stopped (by pid) when the module is done."""
    from prefect.client.orchestration import get_client

    from flows.deploy import ensure_work_pool

    with using_api(prefect_api), get_client(sync_client=True) as client:
        ensure_work_pool(client, POOL, "process")
    process = Worker(prefect_api, POOL, tmp_path_factory.mktemp("worker"))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
        assert not process.process.alive()


def flow_runs(client, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )


def wait_final(client, run_id, timeout: float = RUN_TIMEOUT):
    def final():
        run = client.read_flow_run(run_id)
        return run if run.state and run.state.is_final() else None

    return wait_for(final, timeout, f"flow run {run_id} to finish", every=1.0)


@pytest.mark.slow
def test_deploy_schedules_and_runs_one_at_a_time_per_region(tmp_path, prefect_api, worker):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from flows.deploy import deploy

    path = stack(tmp_path)
    specs = {"pipeline": spec(work_pool=POOL, project_dir=str(tmp_path))}  # the shared worker
    with using_api(prefect_api), get_client(sync_client=True) as client:
        assert [c.action for c in deploy(path, dry_run=True, specs=specs)] == ["create", "create"]
        assert "shop-pipeline-us" not in {d.name for d in client.read_deployments()}
        assert [c.action for c in deploy(path, specs=specs)] == ["create", "create"]
        assert [c.action for c in deploy(path, specs=specs)] == ["unchanged", "unchanged"]

        us = client.read_deployment_by_name("mdstack-pipeline/shop-pipeline-us")
        (schedule,) = us.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (
            "0 6 * * *",
            "America/New_York",
        )
        assert us.parameters == {"region": "us", "config_path": "stack.yml"}
        assert us.work_pool_name == POOL and "mdstack:shop" in us.tags
        assert us.global_concurrency_limit.limit == 1
        assert us.concurrency_options.collision_strategy.value == "ENQUEUE"
        assert us.pull_steps == [{"flows.project.enter_project": {"directory": str(tmp_path)}}]
        assert (tmp_path / "prefect.yaml").exists()

        first = run_deployment(us.id, parameters={"region": "us"}, timeout=0)
        second = run_deployment(us.id, parameters={"region": "us"}, timeout=0)
        a, b = wait_final(client, first.id), wait_final(client, second.id)
        assert a.state.is_completed(), a.state
        assert b.state.is_completed(), b.state
        earlier, later = sorted((a, b), key=lambda run: run.start_time)
        assert later.start_time >= earlier.end_time  # strictly after: never both running
        waited = [s.name for s in client.read_flow_run_states(later.id)]
        assert "AwaitingConcurrencySlot" in waited, waited

    with DuckDBWarehouse(tmp_path / "warehouse") as wh:
        runs = wh.query("SELECT DISTINCT run_id, region FROM _mds_runs").to_pylist()
    assert len(runs) == 2 and {r["region"] for r in runs} == {"us"}


@pytest.mark.slow
def test_a_deployment_made_in_one_folder_runs_from_a_copy_of_the_project_elsewhere(
    tmp_path, prefect_api
):
    """Deployed from folder A, which is then removed; a worker started with a copy at B
    runs it there: the deployment names no folder of the machine that deployed it."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from flows.deploy import deploy

    here, there = tmp_path / "deployed-from", tmp_path / "worker-copy"
    here.mkdir()
    path = stack(here, regions={"us": {"timezone": "America/New_York"}})
    config = yaml.safe_load(path.read_text())
    config["name"] = "shop5"
    config["targets"]["local"]["path"] = "warehouse"  # relative to stack.yml
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    pool = "mdstack-elsewhere"  # a pool of its own: the shared worker must not take the run
    with using_api(prefect_api), get_client(sync_client=True) as client:
        deploy(path, specs={"pipeline": spec(work_pool=pool)})
        deployment = client.read_deployment_by_name("mdstack-pipeline/shop5-pipeline-us")
        assert str(here) not in deployment.model_dump_json()
        shutil.copytree(here, there)
        shutil.rmtree(here)
        worker = Worker(
            prefect_api, pool, tmp_path / "worker-home", {"MDSTACK_PROJECT_DIR": str(there)}
        )
        try:
            worker.wait_ready()
            run = wait_final(client, run_deployment(deployment.id, timeout=0).id)
        finally:
            worker.stop()
        assert run.state.is_completed(), worker.process.output()[-3000:]
    assert not here.exists()
    with DuckDBWarehouse(there / "warehouse") as wh:
        (orders,) = wh.query("SELECT count(*) AS n FROM raw_shop.orders").to_pylist()
    assert orders["n"] > 0


@pytest.mark.slow
def test_a_changed_plan_updates_and_deletes_stale_deployments(tmp_path, prefect_api):
    from prefect.client.orchestration import get_client

    from flows.deploy import deploy

    path = stack(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["name"] = "shop2"  # a stack of its own on the shared server
    config["sources"]["outlet"] = config["sources"]["shop"]
    path.write_text(yaml.safe_dump(config))
    specs = {"pipeline": spec(work_pool=POOL)}
    with using_api(prefect_api), get_client(sync_client=True) as client:
        deploy(path, specs=specs)
        assert slots(client, "shop2") == {"outlet": 1, "shop": 1}  # each source's concurrency
        config["regions"] = {"us": {"timezone": "America/Chicago", "schedule": "15 4 * * *"}}
        del config["sources"]["outlet"]
        config["sources"]["shop"]["concurrency"] = 3
        path.write_text(yaml.safe_dump(config))
        dry = deploy(path, dry_run=True, specs=specs)
        assert [(c.action, c.name) for c in dry] == [
            ("update", "shop2-pipeline-us"),
            ("delete", "shop2-pipeline-eu"),
        ]
        assert any("America/Chicago" in d for d in dry[0].differences)
        deploy(path, specs=specs)
        us = client.read_deployment_by_name("mdstack-pipeline/shop2-pipeline-us")
        assert [(s.schedule.cron, s.schedule.timezone) for s in us.schedules] == [
            ("15 4 * * *", "America/Chicago")
        ]
        names = {d.name for d in client.read_deployments()}
        assert "shop2-pipeline-eu" not in names
        assert slots(client, "shop2") == {"shop": 3}  # resized; a removed source's limit gone
        assert [c.action for c in deploy(path, dry_run=True, specs=specs)] == ["unchanged"]
        manual = {"pipeline": spec(work_pool=POOL, schedule=None)}
        config["regions"] = {"us": {"timezone": "America/Chicago"}}
        path.write_text(yaml.safe_dump(config))
        deploy(path, specs=manual)
        us = client.read_deployment_by_name("mdstack-pipeline/shop2-pipeline-us")
        assert us.schedules == []


def slots(client, stack: str) -> dict[str, int]:
    """The global concurrency limits of a stack's sources on the server: source -> slots."""
    prefix = f"mdstack-{stack}-source-"
    found = client.read_global_concurrency_limits(limit=200)
    return {g.name.removeprefix(prefix): g.limit for g in found if g.name.startswith(prefix)}


@pytest.mark.slow
def test_prefect_deploy_of_the_written_prefect_yaml_makes_the_same_deployments(
    tmp_path, prefect_api
):
    import os
    import subprocess
    import sys

    from flows.deploy import deploy, write_prefect_yaml

    path = stack(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["name"] = "shop4"
    path.write_text(yaml.safe_dump(config))
    specs = {"pipeline": spec(work_pool=POOL), "marts": spec(work_pool=POOL, after=["pipeline"])}
    plan = plans.plan_deployments(load_config(path), specs)
    written = write_prefect_yaml(tmp_path / "prefect.yaml", plan)
    command = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all"]
    done = subprocess.run(  # from the project folder, which holds no code
        [*command, "--prefect-file", str(written)],
        cwd=tmp_path,
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with using_api(prefect_api):
        changes = deploy(path, dry_run=True, specs=specs)
    assert [(c.action, c.differences) for c in changes] == [("unchanged", ())] * 4


@pytest.mark.slow
def test_a_file_landing_starts_the_deployment_that_watches_its_folder(
    tmp_path, prefect_api, worker
):
    from prefect.client.orchestration import get_client

    from flows.deploy import deploy
    from flows.sensors import LandingWatch, landed_event, poll_once

    path = stack(tmp_path, regions={"us": {"timezone": "America/New_York"}})
    config = yaml.safe_load(path.read_text())
    config["name"] = "shop3"
    path.write_text(yaml.safe_dump(config))
    specs = {
        "landing": spec(
            work_pool=POOL, project_dir=str(tmp_path), on_file={"path": "landing/{{ region }}"}
        ),
        "after": spec(work_pool=POOL, project_dir=str(tmp_path), after=["landing"]),
    }
    folder = tmp_path / "landing" / "us"
    folder.mkdir(parents=True)
    with using_api(prefect_api), get_client(sync_client=True) as client:
        deploy(path, specs=specs)
        deployment = client.read_deployment_by_name("mdstack-pipeline/shop3-landing-us")
        (automation,) = client.read_resource_related_automations(
            f"prefect.deployment.{deployment.id}"
        )
        assert automation.trigger.expect == {"mdstack.file.landed"}
        assert automation.trigger.match.model_dump()["mdstack.landing"] == str(folder)

        plan = plans.plan_deployments(load_config(path), specs)
        watch = LandingWatch(plans.landings(plan), tmp_path / "sensor.json")
        assert watch.poll() == []
        (folder / "orders-2026-01-01.csv").write_text("id\n1\n")
        assert watch.poll() == []  # first sight: not settled yet
        landed = poll_once(watch, "shop3")
        assert [f.path.name for f in landed] == ["orders-2026-01-01.csv"]
        event = landed_event(landed[0], "shop3")
        assert event["resource"]["mdstack.landing"] == str(folder)
        assert poll_once(watch, "shop3") == []  # reported once only
        assert LandingWatch(plans.landings(plan), tmp_path / "sensor.json").poll() == []

        runs = wait_for(
            lambda: flow_runs(client, deployment.id), 120, "the triggered flow run", every=1.0
        )
        run = wait_final(client, runs[0].id)
        assert run.state.is_completed(), run.state
        assert run.parameters["region"] == "us"

        # "run when pipeline X finished": the landing run's completion starts `after`
        downstream = client.read_deployment_by_name("mdstack-pipeline/shop3-after-us")
        runs = wait_for(
            lambda: flow_runs(client, downstream.id), 120, "the run after landing", every=1.0
        )
        after = wait_final(client, runs[0].id)
        assert after.state.is_completed(), after.state
        assert after.start_time >= run.end_time


# -- retries and reruns, in process against the server ------------------------------------


def counting_stack(folder: Path, fail: dict | None = None, overlap: int = 0) -> Path:
    """The counting source; with ``overlap``, its streams must sync at the same time."""
    source = {
        "connector": "counting",
        "config": {"log": str(folder / "reads.jsonl"), "fail": fail or {}, "overlap": overlap},
        "schema": "raw_feed",
        "concurrency": max(overlap, 1),
        "streams": {"events": {"sync": "incremental_deduped"}, "items": {}},
    }
    return stack(folder, {"feed": source}, {"us": {"timezone": "UTC"}})


@pytest.fixture
def quick_retries(monkeypatch):
    """The flow's sync task with its retry policy, minus the waiting."""
    import flows.pipeline

    monkeypatch.setitem(connectors.REGISTRY, "counting", "tests.counting_source:CountingSource")
    fast = flows.pipeline.sync_stream.with_options(retry_delay_seconds=0, retry_jitter_factor=None)
    monkeypatch.setattr(flows.pipeline, "sync_stream", fast)


def run_flow(path: Path, api: str):
    from flows.pipeline import pipeline

    with using_api(api):
        state = pipeline(region="us", config_path=str(path), return_state=True)
    return state, state.result(raise_on_failure=False)


def run_report(api: str, key: str = "mdstack-run-shop-us"):
    """The flow's latest run report, read back from the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    with using_api(api), get_client(sync_client=True) as client:
        (report,) = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key]))
        )
    return report


@pytest.mark.slow
def test_a_retryable_error_is_retried_until_the_third_attempt_succeeds(
    tmp_path, prefect_api, quick_retries
):
    path = counting_stack(tmp_path, {"stream": "events", "times": 2, "retryable": True})
    state, summary = run_flow(path, prefect_api)
    assert state.is_completed(), summary
    assert len(reads(tmp_path / "reads.jsonl", "events")) == 3
    assert len(reads(tmp_path / "reads.jsonl", "items")) == 1
    assert {s.stream: s.rows_read for s in summary.streams} == {"events": 9, "items": 9}


@pytest.mark.slow
def test_a_non_retryable_error_fails_at_once_and_a_rerun_redoes_only_that_stream(
    tmp_path, prefect_api, quick_retries, monkeypatch
):
    path = counting_stack(
        tmp_path, {"stream": "events", "times": 1, "retryable": False}, overlap=2
    )  # overlap: the two stream tasks must run at the same time, or their reads fail
    log = tmp_path / "reads.jsonl"
    with WebhookServer() as hook:
        declared = yaml.safe_load(path.read_text())
        declared["alerts"] = [{"type": "webhook", "url": f"{hook.url}/alerts"}]
        path.write_text(yaml.safe_dump(declared))
        state, summary = run_flow(path, prefect_api)
        assert state.is_failed()
        assert len(reads(log, "events")) == 1  # not retried
        status = {s.stream: s.status for s in summary.streams}
        assert status == {"events": "failed", "items": "succeeded"}
        report = run_report(prefect_api)
        assert report.type == "markdown" and report.flow_run_id == state.state_details.flow_run_id
        assert "**failed**" in report.data
        assert "Failed: stream feed.events: scripted failure 1 of events" in report.data
        assert "| feed.items | incremental_deduped | succeeded | 9 | 9 | 0 | 0 |" in report.data

        (alert,) = hook.requests
        body = alert.body
        assert body["event"] == "mdstack.run.failure" and body["region"] == "us"
        assert body["failures"][0]["name"] == "feed.events"
        assert "scripted failure 1 of events" in body["failures"][0]["error"]
        assert body["flow_run_id"] and body["flow_run_url"].startswith("http://127.0.0.1")
        assert body["rerun"][0] == (
            f"mdstack run --config {path} --region us --source feed --stream events"
        )

        state, summary = run_flow(path, prefect_api)  # the rerun
        assert state.is_completed(), summary
        assert ": succeeded" in run_report(prefect_api).data.splitlines()[0]
    items = reads(log, "items")
    assert len(items) == 2 and items[1]["state"] == {"day": "2026-01-03"}  # resumed: no rows
    rows = {s.stream: s.rows_read for s in summary.streams}
    assert rows == {"events": 9, "items": 0}
    with DuckDBWarehouse(tmp_path / "warehouse") as wh:
        counts = wh.query(
            "SELECT (SELECT count(*) FROM raw_feed.events) AS events, "
            "(SELECT count(*) FROM raw_feed.items) AS items"
        ).to_pylist()
    assert counts == [{"events": 9, "items": 9}]


@pytest.mark.slow
def test_a_source_slot_held_by_another_run_holds_the_stream_tasks_back(
    tmp_path, prefect_api, quick_retries
):
    """The source's global limit has one slot and someone else (here, the test) holds it:
    the flow's stream tasks start and wait, and read only once the slot is released."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterStartTime,
    )
    from prefect.concurrency.sync import concurrency

    from flows.limits import ensure_source_limits, limit_name

    path = counting_stack(tmp_path)
    log = tmp_path / "reads.jsonl"
    outcome: dict[str, Any] = {}
    started = datetime.now(UTC)
    with using_api(prefect_api), get_client(sync_client=True) as client:
        ensure_source_limits(client, load_config(path))

        def waiting_task() -> bool:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(
                    name=TaskRunFilterName(any_=["sync feed.events [us]"]),
                    start_time=TaskRunFilterStartTime(after_=started),
                )
            )
            return any(r.state and r.state.is_running() for r in runs)

        with concurrency(limit_name("shop", "feed"), occupy=1, strict=True):
            flow = threading.Thread(target=lambda: outcome.update(run=run_flow(path, prefect_api)))
            flow.start()
            wait_for(waiting_task, RUN_TIMEOUT, "the stream task to start")
            time.sleep(1.0)
            assert not log.exists() or reads(log) == []  # started, but waiting for the slot
        flow.join(RUN_TIMEOUT)
    state, summary = outcome["run"]
    assert state.is_completed(), summary
    assert {r["stream"] for r in reads(log)} == {"events", "items"}


def test_a_dry_run_without_a_server_shows_the_plan_and_its_schedules(monkeypatch):
    """The shipped demo: one deployment per region, 06:00 in each region's time zone."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from stack.cli import app

    monkeypatch.chdir(ROOT)
    written = (ROOT / "prefect.yaml").read_text()
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        planned = CliRunner().invoke(app, ["deploy", "--dry-run"])
        refused = CliRunner().invoke(app, ["deploy"])
    assert planned.exit_code == 0, planned.output
    assert "create    shop-pipeline-eu (0 6 * * * Europe/Berlin; pool default)" in planned.output
    assert "shop-pipeline-us (0 6 * * * America/New_York" in planned.output
    assert "shop-pipeline-apac (0 6 * * * Asia/Singapore" in planned.output
    assert (ROOT / "prefect.yaml").read_text() == written  # nothing was changed
    assert refused.exit_code == 2
    assert "--dry-run` shows the plan" in " ".join(refused.output.split())
