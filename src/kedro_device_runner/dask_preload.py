"""Dask worker preload: a worker that starts with this module is ready for namespace tasks.

    dask worker tcp://scheduler:8786 --preload kedro_device_runner.dask_preload
    dask cuda worker tcp://scheduler:8786 --preload kedro_device_runner.dask_preload

At start-up the worker restores glibc's malloc thresholds (see heap.py), imports torch and
the project's pipelines (which import transformers and every node's module), builds the
project's hook manager, and creates its CUDA context when it sees a GPU: the seconds this
takes are spent before the first namespace arrives, not inside it. `DaskRunner` also does
this on every worker as a run opens (`warm_up`), overlapping the shared nodes; on a
preloaded worker that finds everything done. The Kedro package is the project in the
worker's working folder; `KEDRO_DEVICE_RUNNER_PACKAGE` names another.
"""

from __future__ import annotations

import logging

from kedro_device_runner.dask_worker import warm_up
from kedro_device_runner.preload import project_package


def dask_setup(worker) -> None:
    package = project_package()
    seconds = warm_up(package)
    logging.getLogger(__name__).info(
        "Worker %s preloaded torch and Kedro package %s in %.1f s", worker.address, package, seconds
    )
