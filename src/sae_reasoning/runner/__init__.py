"""Runs each model namespace as one unit on its own device slot (GPU or CPU share), or on
a Dask cluster.

`kedro run --pipelines=phase4 --runner=sae_reasoning.runner.DeviceSlotRunner`
`kedro run --pipelines=phase4 --runner=sae_reasoning.runner.DaskRunner --runner-params=address=tcp://host:8786`
"""

from sae_reasoning.runner.core import CrossProcessDatasetError, NamespaceRunError, UnitResult
from sae_reasoning.runner.dask_runner import DaskRunError, DaskRunner
from sae_reasoning.runner.device_slot import DeviceSlotRunError, DeviceSlotRunner
from sae_reasoning.runner.memory import InsufficientMemoryError, MemoryNeed
from sae_reasoning.runner.slots import Slot, resolve_slots

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
