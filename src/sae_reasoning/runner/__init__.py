"""Runs each model namespace as one unit on its own device slot (GPU or CPU share).

`kedro run --pipelines=phase4 --runner=sae_reasoning.runner.DeviceSlotRunner`
"""

from sae_reasoning.runner.device_slot import (
    CrossProcessDatasetError,
    DeviceSlotRunError,
    DeviceSlotRunner,
    UnitResult,
)
from sae_reasoning.runner.slots import Slot, resolve_slots

__all__ = [
    "CrossProcessDatasetError",
    "DeviceSlotRunError",
    "DeviceSlotRunner",
    "Slot",
    "UnitResult",
    "resolve_slots",
]
