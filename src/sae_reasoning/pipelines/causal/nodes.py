"""Thin node: the work lives in sae_reasoning.causal."""

from __future__ import annotations

import logging

import pandas as pd

from sae_reasoning.activations.store import ActivationSet
from sae_reasoning.causal.analysis import CausalConfig, run_causal_analysis
from sae_reasoning.causal.circuits import circuit_graph
from sae_reasoning.models.loading import ModelHandle

log = logging.getLogger(__name__)


def analyse_features(model: ModelHandle, saes: dict, prompts: pd.DataFrame, activations: ActivationSet,
                     baseline_scores: pd.DataFrame, causal: dict):
    log.info("causal %s: running attribution and ablations (results are not cached across runs; "
             "`kedro run --only-missing-outputs` skips this node when its outputs exist)", model.name)
    lm = model.load()
    effects, ranking, summary, circuits, contexts, selection = run_causal_analysis(
        lm, saes, prompts, activations, CausalConfig.from_params(causal), baseline=baseline_scores)
    return (effects.assign(model=model.name), {"model": model.name, "hook_points": ranking},
            {"model": model.name, "selection": selection, "hook_points": summary}, circuit_graph(model.name, circuits),
            {"model": model.name, "hook_points": contexts})


def train_probes(model: ModelHandle, saes: dict, prompts: pd.DataFrame, activations: ActivationSet,
                 baseline_scores: pd.DataFrame, feature_ranking: dict, causal_summary: dict, probes: dict) -> dict:
    """Linear probes at the answer position beside the ablations (sae_reasoning.probes); reads the
    capture store, loads no weights."""
    from sae_reasoning.probes import run_probes   # scikit-learn takes ~2 s to import: only where probes run

    log.info("probes %s: logistic-regression probes at the answer position", model.name)
    return run_probes(model.name, saes, prompts, activations, baseline_scores, feature_ranking, causal_summary,
                      probes)
