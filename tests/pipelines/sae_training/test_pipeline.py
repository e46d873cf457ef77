"""The sae_training pipeline, namespaced as the registry does it, on a real DataCatalog built
from conf/base/catalog_sae_training.yml and a tiny ActivationSet."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import pipeline
from kedro.runner import SequentialRunner

from sae_reasoning.activations.store import ActivationSet, ShardWriter
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.pipelines.sae_training import create_pipeline
from sae_reasoning.pipelines.sae_training.nodes import hook_points_for, training_jobs
from tests.prompts_fixture import tiny_prompts
from tests.sae.conftest import _one_thread  # noqa: E402,F401  (autouse: one torch thread)

PROJECT = Path(__file__).resolve().parents[3]
HOOK = "blocks.3.hook_resid_post"
PARAMS_FILE = PROJECT / "conf/base/parameters_sae_training.yml"
PARAMS = {  # the shipped parameter block, scaled down to a 2,000-token store
    **yaml.safe_load(PARAMS_FILE.read_text())["sae_training"],
    "expansion_factor": 4,
    "batch_size": 128,
    "training_tokens": 1280,
    "init_sample_tokens": 512,
    "checkpoint_every": 4,
    "progress": False,
    "l1_coefficient": 1.0,
    "lr": 3e-3,
    "spliced_eval": {"n_prompts": 4, "max_tokens": 64, "batch_size": 2, "seed": 0},
}
D_MODEL = 64  # the tiny models' width (tests/tiny.py)


@pytest.fixture
def acts(tmp_path) -> ActivationSet:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, D_MODEL, generator=g)
    for bench in ("gsm8k", "logic"):
        w = ShardWriter(
            tmp_path / "acts" / bench / HOOK,
            header={"model": "toy", "hook_point": HOOK},
            d_model=D_MODEL,
            shard_tokens=500,
        )
        idx = torch.arange(1000)
        part = x[:1000] if bench == "gsm8k" else x[1000:]
        w.add(part, example_index=idx // 10, position=idx % 10, token_id=torch.zeros(1000))
        w.close()
    return ActivationSet.open(tmp_path / "acts")


def corpus_set(tmp_path: Path) -> ActivationSet:
    """A captured SAE training corpus (sae_training.sources trains on it beside the benchmarks)."""
    root = tmp_path / "corpus_acts"
    if not root.exists():
        w = ShardWriter(
            root / "corpus" / HOOK,
            header={"model": "toy", "hook_point": HOOK},
            d_model=D_MODEL,
            shard_tokens=500,
        )
        idx = torch.arange(1000)
        w.add(
            torch.randn(1000, D_MODEL, generator=torch.Generator().manual_seed(5)),
            example_index=idx // 50,
            position=idx % 50,
            token_id=torch.zeros(1000),
        )
        w.close()
    return ActivationSet.open(root)


@pytest.fixture
def handle(tiny_model_dirs) -> ModelHandle:
    return ModelHandle(ModelSpec("toy", str(tiny_model_dirs["llama"]), converted_cache=None))


def make_catalog(
    tmp_path: Path, acts: ActivationSet, params: dict, handle: ModelHandle
) -> DataCatalog:
    cfg = yaml.safe_load((PROJECT / "conf/base/catalog_sae_training.yml").read_text())
    for entry in cfg.values():
        for key in ("path", "filepath"):
            if key in entry:
                entry[key] = str(tmp_path / entry[key])
        if "save_args" in entry:
            entry["save_args"]["dpi"] = 40  # rendering speed only
    catalog = DataCatalog.from_config(cfg)
    catalog["toy.activations"] = MemoryDataset(acts, copy_mode="assign")
    catalog["toy.corpus_activations"] = MemoryDataset(corpus_set(tmp_path), copy_mode="assign")
    catalog["toy.model"] = MemoryDataset(handle, copy_mode="assign")
    catalog["prompts"] = MemoryDataset(tiny_prompts(n_open=8, n_choice=4))
    catalog["params:sae_training"] = params
    catalog["params:models.toy"] = {"layers": [3]}
    return catalog


def toy_pipeline():
    # as pipeline_registry.namespaced() builds it
    return pipeline(
        create_pipeline(),
        namespace="toy",
        inputs={"prompts"},
        parameters={
            "params:model": "params:models.toy",
            "params:sae_training": "params:sae_training",
        },
    )


def test_pipeline_trains_evaluates_plots_then_reuses(tmp_path, acts, handle, caplog):
    SequentialRunner().run(toy_pipeline(), make_catalog(tmp_path, acts, PARAMS, handle))
    folder = tmp_path / "data/06_models/sae/toy" / HOOK
    assert (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()
    metrics = json.loads((tmp_path / "data/07_model_output/toy/sae_metrics.json").read_text())
    m = metrics[HOOK]
    assert m["split"] == "heldout" and m["eval_every"] == PARAMS["eval_every"]
    # held-out: example_index % 10 == 0 -> 10 examples per benchmark, 9 tokens each (position 0 out)
    assert m["n_tokens"] == 2 * 10 * 9
    # trained on every corpus row (position 0 out) and the benchmarks' other 90 examples each
    assert m["training"]["n_train_tokens_by_source"] == {
        "corpus": 1000 - 20,
        "benchmarks": 2 * 90 * 9,
    }
    assert {
        "mse",
        "fvu",
        "explained_variance",
        "l0",
        "dead_fraction",
        "dense_fraction",
        "mean_norm",
    } <= set(m)
    spliced = m["spliced"]  # held-out prompt rows 0 and 10 of the 12
    assert spliced["n_prompts"] == 2 and spliced["n_predicted_tokens"] > 0
    for key in (
        "ce_loss_without_sae",
        "ce_loss_with_sae",
        "ce_loss_with_ablation",
        "ce_loss_score",
        "kl_div_with_sae",
        "kl_div_with_ablation",
    ):
        assert isinstance(spliced[key], float), key
    planted = m["planted_dictionary"]
    assert 0.0 <= planted["fraction_recovered"] <= 1.0 and planted["cosine_threshold"] == 0.9
    assert planted["config"]["architecture"] == "relu" and len(planted["best_cosine"]) == 256
    assert (tmp_path / "data/08_reporting/toy_sae_training_curve.png").stat().st_size > 1000
    weights = (folder / "sae_weights.safetensors").read_bytes()

    with caplog.at_level(logging.INFO, logger="sae_reasoning"):
        SequentialRunner().run(toy_pipeline(), make_catalog(tmp_path, acts, PARAMS, handle))
    assert "reusing SAE" in caplog.text
    assert (folder / "sae_weights.safetensors").read_bytes() == weights


def test_missing_hook_point_is_a_clear_error(acts):
    with pytest.raises(ValueError, match=r"blocks\.7\.hook_resid_post.*captured: \['blocks\.3"):
        training_jobs(acts, corpus_set(acts.root.parent), PARAMS, {"layers": [7]})


def test_hook_points_from_model_layers():
    assert hook_points_for({"layers": [15, 20]}, {}) == [
        "blocks.15.hook_resid_post",
        "blocks.20.hook_resid_post",
    ]
    with pytest.raises(ValueError, match="layers"):
        hook_points_for({}, {})


def test_shipped_parameters_load_through_omegaconf():
    from omegaconf import OmegaConf

    from sae_reasoning.sae import TrainingConfig

    params = OmegaConf.to_container(OmegaConf.load(PARAMS_FILE))
    cfg = TrainingConfig.from_params(params["sae_training"])
    assert cfg.architecture == "relu" and cfg.expansion_factor == 8 and cfg.batch_size == 4096
    assert cfg.exclude.exclude_first_position and cfg.exclude.max_norm_ratio == 10.0
    assert cfg.eval_every == 10 and cfg.device == "auto"
    assert cfg == TrainingConfig()  # the dataclass defaults mirror the shipped YAML
