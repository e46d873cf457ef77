"""What makes a fresh process ready to run namespace groups, done once ahead of time.

Importing torch and the project's pipelines (every node's module: transformers...) takes
seconds. `DeviceSlotRunner`'s fork server does it once (`fork_server_preload`) and its CPU
workers are forks of that process; `DaskRunner.warm_up` and the Dask worker preload
(`dask_preload`) do it on each Dask worker. Nothing here runs a torch op.
"""

from __future__ import annotations

import os
from pathlib import Path

from kedro.framework import project
from kedro.framework.startup import bootstrap_project

from kedro_device_runner.kedro_private import hook_manager

# The Kedro package to import, for a process that has no other way to be told.
PACKAGE_ENV_VAR = "KEDRO_DEVICE_RUNNER_PACKAGE"


def configured_package() -> str | None:
    """The Kedro project package configured in this process (`kedro run` sets it)."""
    return project.PACKAGE_NAME


def project_package() -> str | None:
    """The package a worker started on its own serves: PACKAGE_ENV_VAR, else the one
    configured here, else the Kedro project in the working folder (its pyproject.toml)."""
    package = os.environ.get(PACKAGE_ENV_VAR) or configured_package()
    if package:
        return package
    try:
        return bootstrap_project(Path.cwd()).package_name
    except Exception:  # noqa: BLE001 - not a Kedro project: torch and Kedro only
        return None


def import_project(package: str | None) -> None:
    """Import torch, cloudpickle, pandas and Kedro's hook plugins (a worker's hook manager
    then builds fast) and, with `package`, configure that Kedro project and import its
    pipelines. pandas: the project's tables, and kedro-viz's dataset hook imports it at
    the first dataset a node loads (half a second)."""
    import cloudpickle  # noqa: F401
    import pandas  # noqa: F401
    import torch  # noqa: F401

    if package:
        if project.PACKAGE_NAME != package:
            project.configure_project(package)
            project.validate_settings()
        dict(project.pipelines)  # the registry imports every pipeline's nodes
    hook_manager((), project.settings.DISABLE_HOOKS_FOR_PLUGINS)
