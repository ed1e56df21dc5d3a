"""docker-compose.yml is for users (no Docker engine here): check that it hangs together
with mdstack's own defaults, since nothing else would notice it drifting."""

from __future__ import annotations

import re

import yaml

from stack.config.orchestration import DeploymentSpec
from tests.conftest import ROOT


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_named_volume_is_declared_and_every_dependency_exists():
    spec = compose()
    services, declared = spec["services"], set(spec["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in declared, f"{name}: volume {source} is not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if service["depends_on"][dependency].get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency}: no healthcheck"


def test_worker_serves_the_default_pool_of_the_prefect_server_on_postgresql():
    services = compose()["services"]
    worker = " ".join(services["worker"]["command"])
    pool = re.search(r"--pool (\S+)", worker)
    assert pool and pool.group(1) == DeploymentSpec.model_fields["work_pool"].default
    assert "--type process" in worker
    assert services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"
    database = services["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    host = re.search(r"@([\w-]+):5432/", database)
    assert database.startswith("postgresql+asyncpg://") and host
    assert host.group(1) in services


def test_superset_runs_mdstack_dashboards_on_the_project_with_its_cache_in_a_volume():
    superset = compose()["services"]["superset"]
    command = " ".join(superset["command"])
    assert "-e ." in command and "mdstack dashboards --host 0.0.0.0 --port 8088" in command
    assert ".:/mdstack" in superset["volumes"] and superset["working_dir"] == "/mdstack"
    cache = superset["environment"]["XDG_CACHE_HOME"]
    assert f"superset:{cache}" in superset["volumes"]
    assert superset["ports"] == ["127.0.0.1:8088:8088"]
