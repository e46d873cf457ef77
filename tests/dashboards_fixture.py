"""Feature dashboards of a tiny model, built as the pipeline builds them: a real capture store,
the real causal node on it, the dashboards node, and the catalog entry that writes the site."""

from __future__ import annotations

from pathlib import Path

import yaml
from kedro.io import DataCatalog

from sae_reasoning.models.hooks import hook_point
from sae_reasoning.pipelines.causal.nodes import analyse_features, feature_dashboards
from tests.causal.test_splice import random_sae
from tests.causal_run_fixture import CONF, captured_run, clean_baseline, tiny_causal_params

HOOK = hook_point(1)


def build(model_dir: Path, root: Path) -> tuple[dict, DataCatalog]:
    """(the node's output, a catalog whose `tiny.feature_dashboards` wrote it under
    root/features)."""
    handle, prompts, acts = captured_run(model_dir, root / "acts", layer=1)
    baseline = clean_baseline(handle, prompts, device="cpu")
    # test_dashboards counts these: 4 ranked candidates beside 2 controls.
    params = tiny_causal_params(top_k=4, n_random_sets=1)
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
