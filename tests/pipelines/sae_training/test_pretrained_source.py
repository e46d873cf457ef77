"""A pretrained SAE chosen by config alone (`models.<ns>.sae_source`): a local SAELens folder
written by SAELens itself goes through the namespaced sae_training pipeline (train_sae ->
`sae` dataset -> evaluate_sae) on a real DataCatalog, then through the causal node."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml
from kedro.io import MemoryDataset
from kedro.runner import SequentialRunner

from sae_reasoning.activations import ActivationSet
from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.pipelines.causal.nodes import analyse_features
from sae_reasoning.pipelines.sae_training.nodes import training_jobs
from sae_reasoning.sae.pretrained import SAESourceError
from tests.pipelines.sae_training.test_pipeline import PARAMS, PROJECT, make_catalog, toy_pipeline
from tests.prompts_fixture import tiny_prompts

HOOK = "blocks.1.hook_resid_post"  # where the SAE is used ...
SAE_HOOK = "blocks.2.hook_resid_pre"  # ... and the name it was trained under (the same tensor)


@pytest.fixture(scope="module")
def captured(tiny_model_dirs, tmp_path_factory):
    handle = ModelHandle(ModelSpec("toy", str(tiny_model_dirs["llama"]), converted_cache=None))
    prompts = tiny_prompts(n_open=8, n_choice=4)
    root = tmp_path_factory.mktemp("acts")
    CaptureJob(handle, prompts, layers=[1]).run(root)
    return handle, prompts, ActivationSet.open(root)


@pytest.fixture(scope="module")
def saelens_folder(tmp_path_factory):
    """An SAE saved by SAELens (StandardSAE.save_model) at the tiny model's width."""
    import sae_lens

    cfg = sae_lens.StandardSAEConfig(d_in=64, d_sae=48)
    cfg.metadata.hook_name, cfg.metadata.model_name = SAE_HOOK, "someone-elses-name"
    sae = sae_lens.StandardSAE(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    folder = tmp_path_factory.mktemp("saelens") / "my_sae"
    sae.save_model(folder)
    return folder, sae


def test_local_saelens_folder_runs_through_sae_training_and_causal(
    captured, saelens_folder, tmp_path, caplog
):
    handle, prompts, acts = captured
    folder, theirs = saelens_folder
    catalog = make_catalog(tmp_path, acts, PARAMS, handle)
    catalog["prompts"] = prompts
    # Every hook point is pretrained: training reads nothing, so no corpus capture is needed.
    catalog["toy.corpus_activations"] = MemoryDataset(acts, copy_mode="assign")
    catalog["params:models.toy"] = {"layers": [1], "sae_source": {SAE_HOOK: {"path": str(folder)}}}
    with caplog.at_level(logging.INFO, logger="sae_reasoning"):
        SequentialRunner().run(toy_pipeline(), catalog)
    assert "training SAE" not in caplog.text  # the hook point skipped training

    out = tmp_path / "data/06_models/sae/toy" / HOOK
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["source"]["kind"] == "path" and summary["source"]["path"] == str(
        folder.resolve()
    )
    assert summary["source"]["hook_name"] == SAE_HOOK and summary["source"]["d_sae"] == 48
    metrics = json.loads((tmp_path / "data/07_model_output/toy/sae_metrics.json").read_text())[HOOK]
    assert metrics["training"]["source"]["path"] == str(folder.resolve())
    assert metrics["spliced"]["n_prompts"] > 0 and 0 <= metrics["l0"] <= 48

    sae = catalog.load("toy.sae")  # what the causal stage gets: SAELens's function
    x = torch.randn(10, 64)
    torch.testing.assert_close(sae[HOOK].encode(x), theirs.encode(x).detach())
    torch.testing.assert_close(sae[HOOK](x), theirs(x).detach())

    from sae_reasoning.scoring import encode_prompts, score_conditions

    lm = handle.load()
    baseline = score_conditions(lm, encode_prompts(lm.tokenizer, prompts), progress=None)["clean"]
    params = yaml.safe_load((PROJECT / "conf/base/parameters_causal.yml").read_text())["causal"]
    params.update(
        top_k=2,
        n_random_controls=1,
        n_random_sets=1,
        n_random_directions=1,
        n_boot=50,
        stats_tokens=300,
        batch_size=8,
        n_context_features=1,
        n_contexts=1,
        n_null_features=4,
        require_above_chance=False,
    )
    effects, _ranking, summary, _graph, _contexts = analyse_features(
        handle, sae, prompts, acts, baseline, params
    )
    assert HOOK in summary["hook_points"] and effects.delta_logprob.notna().any()


def test_bad_sae_source_is_named_before_any_loading(captured, saelens_folder):
    _, _, acts = captured
    folder, _ = saelens_folder
    with pytest.raises(SAESourceError, match=r"models\.acts\d*\.sae_source\[3\].*add its layer"):
        training_jobs(acts, acts, PARAMS, {"layers": [1], "sae_source": {3: {"path": str(folder)}}})
