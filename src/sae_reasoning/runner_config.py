"""This project's side of kedro_device_runner: how much memory a model namespace needs.

Named in settings.py (`DEVICE_RUNNER_MEMORY_ESTIMATOR`), so `kedro run
--runner=kedro_device_runner.DeviceSlotRunner` places each namespace on a slot where its
model fits. The runner asks only when the namespace sets no `memory_gb` in its block of
the `models` parameter. The estimate reads the model's config, never its weights.
"""

from __future__ import annotations

import logging

from kedro_device_runner import MemoryNeed
from kedro_device_runner.memory import group_param
from sae_reasoning import preflight
from sae_reasoning.datasets.model import ModelDataset
from sae_reasoning.models.loading import ModelLoadError

log = logging.getLogger(__name__)


def group_memory(namespace: str, inputs: set[str], catalog) -> MemoryNeed | None:
    """The model's weights, forward-pass activations and SAE training working set
    (`preflight.estimate_memory`); None without a model among the group's inputs, or
    when its config cannot be read (the worker then reports the loading error itself)."""
    model = _model_input(namespace, inputs, catalog)
    if model is None:
        return None
    handle = model.load()  # a lazy ModelHandle: no weights
    try:
        estimate = preflight.estimate_memory(
            handle.config(),
            handle.spec.dtype,
            capture=group_param(catalog, "params:capture", inputs),
            causal=group_param(catalog, "params:causal", inputs),
            sae_training=group_param(catalog, "params:sae_training", inputs),
        )
    except (ModelLoadError, OSError, ValueError) as exc:
        log.warning(
            "Namespace %s: memory need unknown (%s); it is placed without a memory check.",
            namespace,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        return None
    source = handle.spec.pretrained_model_name_or_path
    return MemoryNeed(
        namespace,
        estimate["total_bytes"],
        f"{handle.spec.name} ({source}, {handle.spec.dtype})",
        estimate["breakdown"],
    )


def _model_input(namespace: str, inputs: set[str], catalog) -> ModelDataset | None:
    for name in sorted(inputs, key=lambda n: n != f"{namespace}.model"):
        if name.startswith("params:"):
            continue
        try:
            dataset = catalog.get(name, fallback_to_runtime_pattern=True)
        except Exception:  # noqa: BLE001
            continue
        if isinstance(dataset, ModelDataset):
            return dataset
    return None
