"""What makes a fresh process ready to run namespace groups, done once ahead of time.

Importing torch and the project's pipelines (every node's module: transformers...) takes
seconds. `DeviceSlotRunner`'s fork server does it once (`fork_server_preload`) and its CPU
workers are forks of that process; `DaskRunner.warm_up` and the Dask worker preload
(`dask_preload`) do it on each Dask worker. Nothing here runs a torch op.
"""

from __future__ import annotations

# The Kedro package to import, for a process that has no other way to be told.
PACKAGE_ENV_VAR = "SAE_REASONING_KEDRO_PACKAGE"


def import_project(package: str | None) -> None:
    """Import torch, cloudpickle, pandas and Kedro's hook plugins (a worker's hook manager
    then builds fast) and, with `package`, configure that Kedro project and import its
    pipelines. pandas: the project's tables, and kedro-viz's dataset hook imports it at
    the first dataset a node loads (half a second)."""
    import cloudpickle  # noqa: F401
    import pandas  # noqa: F401
    import torch  # noqa: F401
    from kedro.framework import project
    from kedro.framework.hooks.manager import _create_hook_manager, _register_hooks_entry_points

    if package:
        if project.PACKAGE_NAME != package:
            project.configure_project(package)
            project.validate_settings()
        dict(project.pipelines)  # the registry imports every pipeline's nodes
    _register_hooks_entry_points(_create_hook_manager(), project.settings.DISABLE_HOOKS_FOR_PLUGINS)
