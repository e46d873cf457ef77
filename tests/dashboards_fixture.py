"""Feature dashboards of a tiny model, built as the pipeline builds them: a real capture store,
the real causal node on it, the dashboards node, and the catalog entry that writes the site."""

from __future__ import annotations

from pathlib import Path

import yaml
from kedro.io import DataCatalog

from sae_reasoning.activations import ActivationSet
from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.models.hooks import hook_point
from sae_reasoning.pipelines.causal.nodes import analyse_features, feature_dashboards
from sae_reasoning.scoring import encode_prompts, score_conditions
from tests.causal.test_splice import random_sae
from tests.prompts_fixture import tiny_prompts

CONF = Path(__file__).resolve().parents[1] / "conf" / "base"
HOOK = hook_point(1)


def causal_params() -> dict:
    params = yaml.safe_load((CONF / "parameters_causal.yml").read_text())
    causal = params["causal"]
    causal.update(
        top_k=4,
        n_random_controls=2,
        n_random_sets=1,
        n_random_directions=1,
        n_boot=100,
        stats_tokens=400,
        batch_size=8,
        n_context_features=3,
        n_contexts=2,
        n_null_features=6,
        require_above_chance=False,
    )
    return params


def build(model_dir: Path, root: Path) -> tuple[dict, DataCatalog]:
    """(the node's output, a catalog whose `tiny.feature_dashboards` wrote it under
    root/features)."""
    handle = ModelHandle(ModelSpec("tiny", str(model_dir), converted_cache=None))
    prompts = tiny_prompts(n_open=8, n_choice=4)
    CaptureJob(handle, prompts, layers=[1]).run(root / "acts")
    acts = ActivationSet.open(root / "acts")
    lm = handle.load("cpu")
    baseline = score_conditions(lm, encode_prompts(lm.tokenizer, prompts), progress=None)["clean"]
    params = causal_params()
    sae = random_sae()
    effects, ranking, summary, graph, _ = analyse_features(
        handle, {HOOK: sae}, prompts, acts, baseline, params["causal"]
    )
    out = feature_dashboards(
        handle,
        {HOOK: sae},
        acts,
        effects,
        ranking,
        summary,
        graph,
        params["dashboards"],
        params["causal"]["massive_activations"],
    )
    config = yaml.safe_load((CONF / "catalog_causal.yml").read_text())["{model}.feature_dashboards"]
    config["filepath"] = str(root / "features" / "tiny")
    catalog = DataCatalog.from_config({"tiny.feature_dashboards": config})
    catalog.save("tiny.feature_dashboards", out)
    return out, catalog
