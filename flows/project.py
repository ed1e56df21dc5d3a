"""The pull step of every mdstack deployment: enter the project folder on the worker.

A process worker starts each flow run in a temporary folder of its own; this step moves
the run into the folder that holds ``stack.yml``, so that the deployment's relative
``config_path`` (and every relative path in ``stack.yml``) resolves there. The folder is
the deployment's ``project_dir`` when it names one, else the worker's
``MDSTACK_PROJECT_DIR``: the deployment itself names no folder of the machine that ran
``mdstack deploy``.
"""

from __future__ import annotations

import os
from pathlib import Path

from stack.errors import ConfigError
from stack.run.deployments import PROJECT_DIR_ENV


def enter_project(directory: str | None = None) -> dict[str, str]:
    """Change into the project folder; returns ``{"directory": <absolute folder>}``, the
    output Prefect reads to run the flow there.

    Raises:
        ConfigError: no folder is named, or it does not exist on this worker.
    """
    chosen = directory or os.environ.get(PROJECT_DIR_ENV)
    if not chosen:
        raise ConfigError(
            f"this deployment names no project folder, and this worker has no {PROJECT_DIR_ENV}",
            key="deployments.project_dir",
            hint=f"start the worker with {PROJECT_DIR_ENV}=/path/to/the/folder/of/stack.yml, "
            "or set `project_dir:` (or `mdstack deploy --project-dir`) and deploy again",
        )
    folder = Path(chosen).expanduser()
    if not folder.is_dir():
        source = "project_dir" if directory else PROJECT_DIR_ENV
        raise ConfigError(
            f"the project folder {folder} ({source}) does not exist on this worker",
            key="deployments.project_dir",
            hint="name the folder that holds stack.yml as this worker sees it "
            "(the compose worker mounts it at /mdstack)",
        )
    os.chdir(folder)
    return {"directory": str(folder.resolve())}
