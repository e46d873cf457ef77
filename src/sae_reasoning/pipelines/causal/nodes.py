"""Thin node: the work lives in sae_reasoning.causal."""

from __future__ import annotations

import logging

import pandas as pd

from sae_reasoning.activations.store import ActivationSet
from sae_reasoning.causal.analysis import CausalConfig, run_causal_analysis
from sae_reasoning.causal.circuits import circuit_graph
from sae_reasoning.models.loading import ModelHandle

log = logging.getLogger(__name__)


def analyse_features(
    model: ModelHandle,
    saes: dict,
    prompts: pd.DataFrame,
    activations: ActivationSet,
    baseline_scores: pd.DataFrame,
    causal: dict,
):
    log.info(
        "causal %s: running attribution and ablations (results are not cached across runs; "
        "`kedro run --only-missing-outputs` skips this node when its outputs exist)",
        model.name,
    )
    lm = model.load()
    effects, ranking, summary, circuits, contexts, selection = run_causal_analysis(
        lm, saes, prompts, activations, CausalConfig.from_params(causal), baseline=baseline_scores
    )
    return (
        effects.assign(model=model.name),
        {"model": model.name, "hook_points": ranking},
        {"model": model.name, "selection": selection, "hook_points": summary},
        circuit_graph(model.name, circuits),
        {"model": model.name, "hook_points": contexts},
    )


def train_probes(
    model: ModelHandle,
    saes: dict,
    prompts: pd.DataFrame,
    activations: ActivationSet,
    baseline_scores: pd.DataFrame,
    feature_ranking: dict,
    causal_summary: dict,
    probes: dict,
) -> dict:
    """Linear probes at the answer position beside the ablations (sae_reasoning.probes); reads the
    capture store, loads no weights."""
    from sae_reasoning.probes import (
        run_probes,
    )  # scikit-learn takes ~2 s to import: only where probes run

    log.info("probes %s: logistic-regression probes at the answer position", model.name)
    return run_probes(
        model.name,
        saes,
        prompts,
        activations,
        baseline_scores,
        feature_ranking,
        causal_summary,
        probes,
    )


def feature_dashboards(
    model: ModelHandle,
    saes: dict,
    activations: ActivationSet,
    feature_effects: pd.DataFrame,
    feature_ranking: dict,
    causal_summary: dict,
    circuit,
    dashboards: dict,
    massive_activations: dict,
) -> dict:
    """Per hook point, what the feature dashboards show (sae_reasoning.dashboards); the
    catalog's FeatureDashboardsDataset writes the HTML."""
    from sae_reasoning.dashboards import DashboardConfig, dashboard_data

    cfg = DashboardConfig.from_params({**dashboards, "massive_activations": massive_activations})
    lm = model.load()
    nodes = [d for _, d in circuit.nodes(data=True) if d.get("kind") == "feature"]
    out = {}
    for hook, sae in saes.items():
        summary = causal_summary["hook_points"].get(hook, {})
        effects = (
            feature_effects[feature_effects["hook_point"] == hook]
            if len(feature_effects)
            else feature_effects
        )
        log.info("dashboards %s %s: computing feature pages", model.name, hook)
        out[hook] = dashboard_data(
            lm,
            sae.to(lm.device),
            hook,
            activations,
            ranking=feature_ranking["hook_points"].get(hook, []),
            effects=effects,
            circuit_nodes=[n for n in nodes if n.get("hook_point") == hook],
            token_injection=summary.get("token_injection", {}),
            benchmarks=summary.get("benchmarks", []),
            cfg=cfg,
            model_name=model.name,
        )
    return {"model": model.name, "hook_points": out}
