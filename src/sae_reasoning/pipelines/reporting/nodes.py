"""Thin node: the report is assembled by sae_reasoning.reporting."""

from __future__ import annotations

from sae_reasoning.reporting import plots, report
from sae_reasoning.sae.plots import plot_planted_recovery


def build_report(prompts, configured: dict | None = None, resources=None, **inputs):
    """prompts: the prompts table; configured: the `models` parameters (every model of the
    study); resources: the resource ledger's records (one row per node and run); other inputs are named `<model>__<kind>`, and a model whose namespace failed comes
    without them (the runner runs this node on what finished); outputs: markdown, four JSON
    files, three figures, the resources summary (JSON)."""
    models: dict[str, dict] = {}
    for key, value in inputs.items():
        model, kind = key.rsplit("__", 1)
        models.setdefault(model, {})[kind] = value
    missing = [m for m in (configured or {}) if m not in models]
    r = report.build(models, prompts, missing=missing, resources=resources)
    planted = report.planted_dictionary(r["training_summary"])
    planted_plot = plot_planted_recovery(planted) if planted else plots.empty("no planted-dictionary check in this run")
    effects_plot = (plots.feature_effects(r["effects"]) if len(r["effects"])
                    else plots.empty("no benchmark was analysed (none above chance)"))
    return (r["markdown"], r["training_summary"], r["causal_test_results"], r["feature_importance_ranking"],
            r["top_activating_contexts"], plots.accuracy_vs_chance(r["baseline_vs_chance"]), effects_plot,
            planted_plot, r["resources"])
