"""Kedro runners that run each namespace of a pipeline as one unit on its own device slot
(a GPU, or a share of the CPU cores), in parallel, or on a Dask cluster.

`kedro run --runner=kedro_device_runner.DeviceSlotRunner`
`kedro run --runner=kedro_device_runner.DaskRunner --runner-params=address=tcp://host:8786`

See README.md beside this file.
"""

from kedro_device_runner.core import NamespaceRunError
from kedro_device_runner.crossing import CrossProcessDatasetError
from kedro_device_runner.dask_runner import DaskRunError, DaskRunner
from kedro_device_runner.device_slot import DeviceSlotRunError, DeviceSlotRunner
from kedro_device_runner.memory import InsufficientMemoryError, MemoryNeed
from kedro_device_runner.slots import Slot, resolve_slots
from kedro_device_runner.units import UnitResult

__all__ = [
    "CrossProcessDatasetError",
    "DaskRunError",
    "DaskRunner",
    "DeviceSlotRunError",
    "DeviceSlotRunner",
    "InsufficientMemoryError",
    "MemoryNeed",
    "NamespaceRunError",
    "Slot",
    "UnitResult",
    "resolve_slots",
]
