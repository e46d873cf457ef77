"""Imported by multiprocessing's fork server that `DeviceSlotRunner` starts: everything
its CPU workers need is imported here once, before any of them is forked."""

import os

from kedro_device_runner.preload import PACKAGE_ENV_VAR, import_project

try:
    import_project(os.environ.get(PACKAGE_ENV_VAR) or None)
except Exception:  # noqa: BLE001 - a worker meets the same error and reports it, by namespace
    pass
