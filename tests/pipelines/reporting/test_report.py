"""The report from one tiny model's real causal results: statistics, controls, circuit, contexts."""

from pathlib import Path

import yaml

from sae_reasoning.activations import ActivationSet
from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.models.hooks import hook_point
from sae_reasoning.pipelines.causal.nodes import analyse_features
from sae_reasoning.pipelines.reporting.nodes import build_report
from sae_reasoning.pipelines.reporting.pipeline import create_pipeline
from sae_reasoning.scoring import encode_prompts, score_conditions
from tests.causal.test_splice import random_sae
from tests.prompts_fixture import tiny_prompts

CONF = Path(__file__).resolve().parents[3] / "conf" / "base"


def test_report_shows_cis_controls_circuit_and_contexts(tiny_model_dirs, tmp_path):
    handle = ModelHandle(ModelSpec("tiny", str(tiny_model_dirs["gpt2"]), converted_cache=None))
    prompts = tiny_prompts(n_open=8, n_choice=4)
    CaptureJob(handle, prompts, layers=[2]).run(tmp_path)
    acts = ActivationSet.open(tmp_path)
    params = yaml.safe_load((CONF / "parameters_causal.yml").read_text())["causal"]
    params.update(top_k=3, n_random_controls=2, n_random_sets=2, n_random_directions=1, n_boot=100,
                  stats_tokens=400, batch_size=8, n_context_features=2, n_contexts=2)
    effects, ranking, summary, _graph, contexts = analyse_features(
        handle, {hook_point(2): random_sae()}, prompts, acts, params)
    lm = handle.load()
    baseline = score_conditions(lm, encode_prompts(lm.tokenizer, prompts), progress=None)["clean"]
    inputs = {"tiny__baseline": baseline, "tiny__sae_metrics": {}, "tiny__activations": acts,
              "tiny__effects": effects, "tiny__ranking": ranking, "tiny__summary": summary,
              "tiny__contexts": contexts}
    md, _training, causal, _ranking, ctx, *figs = build_report(**inputs)
    for needle in ("[95% CI]", "McNemar", "Benjamini-Hochberg", "norm-matched random direction",
                   "random live features, draw 2", "SAE error term", "circuit", "⟦"):
        assert needle in md, needle
    assert ctx == {"tiny": contexts["hook_points"]}
    assert len(figs) == 2
    # The pipeline reads each model's contexts and writes the combined JSON.
    p = create_pipeline(["tiny"])
    assert "tiny.feature_contexts" in p.inputs() and "top_activating_contexts" in p.outputs()
