"""This project's memory estimate for kedro_device_runner (runner_config.py), from a tiny
real model folder's config, and its wiring in settings.py."""

from __future__ import annotations

from kedro.io import DataCatalog, MemoryDataset

from kedro_device_runner.memory import ESTIMATOR_SETTING, GiB, estimate_group_memory, load_estimator
from sae_reasoning import settings
from sae_reasoning.datasets.model import ModelDataset
from sae_reasoning.runner_config import group_memory
from tests.tiny import save_tiny_model


def test_settings_name_the_estimator():
    assert load_estimator(getattr(settings, ESTIMATOR_SETTING)) is group_memory
    assert "kedro_device_runner" in settings.RUNNER_MODULE_ALLOWLIST


def test_need_is_estimated_from_the_model_config(tmp_path):
    folder = save_tiny_model("llama", tmp_path / "tiny_llama")
    catalog = DataCatalog(
        datasets={
            "tiny.model": ModelDataset(name="tiny", pretrained_model_name_or_path=str(folder)),
            "params:models.tiny": MemoryDataset({"layers": [1]}),
            "params:sae_training": MemoryDataset({"expansion_factor": 8, "batch_size": 4096}),
            "params:capture": MemoryDataset({"batch_size": 16}),
        }
    )
    inputs = {"tiny.model", "params:models.tiny", "params:sae_training", "params:capture"}
    need = estimate_group_memory("tiny", inputs, catalog, group_memory)
    assert need is not None and need.model.startswith("tiny (") and "float32" in need.model
    assert "weights" in need.how and "SAE" in need.how and need.bytes > 0
    # Without SAE training in the group, less is needed; memory_gb overrides the estimate.
    assert (
        estimate_group_memory("tiny", inputs - {"params:sae_training"}, catalog, group_memory).bytes
        < need.bytes
    )
    catalog.save("params:models.tiny", {"layers": [1], "memory_gb": 12})
    assert estimate_group_memory("tiny", inputs, catalog, group_memory).bytes == 12 * GiB
