"""reporting pipeline: a report section per model (inside its namespace), then one report."""

from kedro.pipeline import Node, Pipeline

from sae_reasoning.pipelines.reporting.nodes import build_report, report_section

# report_section's argument -> the dataset of the model's namespace that feeds it.
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

OUTPUTS = [
    "phase4_report",
    "training_summary",
    "causal_test_results",
    "feature_importance_ranking",
    "top_activating_contexts",
    "baseline_accuracy_plot",
    "feature_effects_plot",
    "planted_dictionary_plot",
    "resources_summary",
]


def section_name(model: str) -> str:
    """The catalog entry of a model's report section (`"{model}_report_section"`)."""
    return f"{model}_report_section"


def model_section(model: str) -> Pipeline:
    """Reads the model's datasets inside its namespace (Kedro accepts dotted names only
    there) and hands the report an undotted output, persisted: the runner may run the
    namespace in another process."""
    return Pipeline(
        [Node(report_section, inputs=SOURCES, outputs="report_section", name="report_section")],
        namespace=model,
        outputs={"report_section": section_name(model)},
    )


def create_pipeline(models: list[str] = (), **kwargs) -> Pipeline:
    # resource_ledger: written by ResourceLedgerHook while nodes run, not by a node.
    inputs = {"prompts": "prompts", "configured": "params:models", "resources": "resource_ledger"}
    clash = sorted(set(models) & set(inputs))
    if clash:  # build_report takes each section as a keyword named after its model
        raise ValueError(
            f"model namespace(s) {clash} clash with build_report's other inputs; "
            "rename them in the `models` parameters"
        )
    inputs.update({m: section_name(m) for m in models})
    return Pipeline(
        [
            *(model_section(m) for m in models),
            Node(build_report, inputs=inputs, outputs=OUTPUTS, name="build_report"),
        ],
        tags="reporting",
    )
