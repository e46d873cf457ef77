"""The capture node does the work (shards on disk before the catalog saves anything); the
activation dataset saves the completed manifests. Run namespaced, as the registry does it,
on a DataCatalog built from conf/base/catalog.yml."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from kedro.io import DataCatalog, DatasetError, MemoryDataset
from kedro.pipeline import pipeline
from kedro.runner import SequentialRunner

from sae_reasoning.datasets.activations import ActivationStoreDataset
from sae_reasoning.datasets.capture_store import CaptureStoreDataset
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.pipelines.capture import create_pipeline
from sae_reasoning.pipelines.capture.nodes import capture_activations
from tests.prompts_fixture import tiny_prompts

PROJECT = Path(__file__).resolve().parents[3]
HOOK1 = "blocks.1.hook_resid_post"


@pytest.fixture
def handle(tiny_model_dirs) -> ModelHandle:
    return ModelHandle(ModelSpec("toy", str(tiny_model_dirs["llama"]), converted_cache=None))


def test_the_node_writes_the_shards_and_returns_the_manifests(tmp_path, handle):
    store = CaptureStoreDataset(path=str(tmp_path / "acts")).load()
    manifests = capture_activations(
        handle, tiny_prompts(), {"shard_tokens": 40}, {"layers": [1]}, store
    )
    assert sorted(manifests) == ["arith", "logic"]
    for bench, by_hook in manifests.items():  # complete on disk before any save
        assert by_hook[HOOK1]["complete"]
        assert (tmp_path / "acts" / bench / HOOK1 / by_hook[HOOK1]["shards"][0]["file"]).is_file()
    ds = ActivationStoreDataset(path=str(tmp_path / "acts"))
    ds.save(manifests)
    assert ds.load().benchmarks == ["arith", "logic"]
    with pytest.raises(DatasetError, match="input only"):
        CaptureStoreDataset(path=str(tmp_path / "acts")).save(manifests)


def make_catalog(tmp_path: Path, handle: ModelHandle) -> DataCatalog:
    cfg = yaml.safe_load((PROJECT / "conf/base/catalog.yml").read_text())
    cfg = {
        k.replace("{model}", "toy"): v
        for k, v in cfg.items()
        if k in ("{model}.activation_store", "{model}.activations")
    }
    for entry in cfg.values():
        entry["path"] = str(tmp_path / entry["path"].replace("{model}", "toy"))
    catalog = DataCatalog.from_config(cfg)
    catalog["toy.model"] = MemoryDataset(handle, copy_mode="assign")
    catalog["prompts"] = MemoryDataset(tiny_prompts())
    catalog["params:capture"] = {"shard_tokens": 40}
    catalog["params:models.toy"] = {"layers": [1]}
    return catalog


def test_the_namespaced_node_captures_then_reuses(tmp_path, handle, caplog):
    toy = pipeline(
        create_pipeline(),
        namespace="toy",
        inputs={"prompts", "examples", "sae_corpus"},
        parameters={
            "params:model": "params:models.toy",
            "params:capture": "params:capture",
            "params:data_loading": "params:data_loading",
        },
    )
    only = toy.only_nodes("toy.capture_activations")
    assert only.inputs() == {
        "toy.model",
        "prompts",
        "params:capture",
        "params:models.toy",
        "toy.activation_store",
    }
    SequentialRunner().run(only, make_catalog(tmp_path, handle))
    folder = tmp_path / "data/04_feature/activations/toy"
    assert (folder / "arith" / HOOK1 / "manifest.json").is_file()
    with caplog.at_level(logging.INFO, logger="sae_reasoning"):
        SequentialRunner().run(only, make_catalog(tmp_path, ModelHandle(handle.spec)))
    assert "reusing activations" in caplog.text
