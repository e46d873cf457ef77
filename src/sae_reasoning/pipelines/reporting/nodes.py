"""Thin nodes: the report is assembled by sae_reasoning.reporting."""

from __future__ import annotations

import pandas as pd

from sae_reasoning.reporting import plots, report
from sae_reasoning.reporting.sae_section import activation_summary, planted_dictionary
from sae_reasoning.sae.plots import plot_planted_recovery


def report_section(
    baseline: pd.DataFrame,
    sae_metrics: dict,
    activations,
    effects: pd.DataFrame,
    ranking: dict,
    summary: dict,
    contexts: dict | None,
    probes: dict | None,
) -> dict:
    """One model's part of the report, built inside its namespace: its results as they are,
    and its activation stores as the manifests' summary (plain data, not the store handle)."""
    return {
        "baseline": baseline,
        "sae_metrics": sae_metrics,
        "activations": activation_summary(activations),
        "effects": effects,
        "ranking": ranking,
        "summary": summary,
        "contexts": contexts,
        "probes": probes,
    }


def build_report(prompts, configured: dict | None = None, resources=None, **sections: dict):
    """prompts: the prompts table; configured: the `models` parameters (every model of the
    study); resources: the resource ledger's records (one row per node and run); sections:
    model namespace -> its `report_section`. A model whose namespace failed comes without
    one (the runner runs this node on what finished). Outputs: markdown, four JSON files,
    three figures, the resources summary (JSON)."""
    missing = [m for m in (configured or {}) if m not in sections]
    r = report.build(sections, prompts, missing=missing, resources=resources)
    planted = planted_dictionary(r["training_summary"])
    planted_plot = (
        plot_planted_recovery(planted)
        if planted
        else plots.empty("no planted-dictionary check in this run")
    )
    effects_plot = (
        plots.feature_effects(r["effects"])
        if len(r["effects"])
        else plots.empty("no benchmark was analysed (none above chance)")
    )
    return (
        r["markdown"],
        r["training_summary"],
        r["causal_test_results"],
        r["feature_importance_ranking"],
        r["top_activating_contexts"],
        plots.accuracy_vs_chance(r["baseline_vs_chance"]),
        effects_plot,
        planted_plot,
        r["resources"],
    )
