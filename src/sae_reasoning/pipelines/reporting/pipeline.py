from kedro.pipeline import Node, Pipeline

# Which dataset of each model namespace feeds each part of the report.
SOURCES = {
    "baseline": "baseline_scores",
    "sae_metrics": "sae_metrics",
    "activations": "activations",
    "effects": "feature_effects",
    "ranking": "feature_ranking",
    "summary": "causal_summary",
    "contexts": "feature_contexts",
    "probes": "probe_results",
}


def create_pipeline(models: list[str] = (), **kwargs) -> Pipeline:
    from sae_reasoning.pipelines.reporting.nodes import build_report

    # resource_ledger: written by ResourceLedgerHook while nodes run, not by a node.
    inputs = {"prompts": "prompts", "configured": "params:models", "resources": "resource_ledger",
              **{f"{m}__{kind}": f"{m}.{ds}" for m in models for kind, ds in SOURCES.items()}}
    return Pipeline([
        Node(build_report, inputs,
             ["phase4_report", "training_summary", "causal_test_results", "feature_importance_ranking",
              "top_activating_contexts", "baseline_accuracy_plot", "feature_effects_plot", "planted_dictionary_plot",
              "resources_summary"],
             name="build_report"),
    ], tags="reporting")
