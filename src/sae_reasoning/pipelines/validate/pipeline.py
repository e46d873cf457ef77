"""validate pipeline: per model, checks and a budget (inside its namespace); then one report."""

from kedro.pipeline import Node, Pipeline

from sae_reasoning.pipelines.validate.nodes import (
    add_budget,
    check_model,
    fail_on_errors,
    plan_budget,
    summarize_validation,
)

SHARED = ["params:capture", "params:causal", "params:sae_training"]


def model_checks(model: str) -> Pipeline:
    """The model's checks and budget, read inside its namespace (Kedro accepts dotted names
    only there) and handed on under undotted names, `<model>_validation` and `<model>_budget`."""
    return Pipeline(
        [
            Node(
                check_model,
                inputs=["model", "params:model", *SHARED],
                outputs="validation",
                name="check_model",
            ),
            Node(
                plan_budget,
                inputs=["model", "params:model", *SHARED, "params:data_loading", "params:budget"],
                outputs="budget",
                name="plan_budget",
            ),
        ],
        namespace=model,
        outputs={"validation": f"{model}_validation", "budget": f"{model}_budget"},
        parameters={
            "params:model": f"params:models.{model}",
            **{p: p for p in [*SHARED, "params:data_loading", "params:budget"]},
        },
    )


def create_pipeline(models: list[str] = (), **kwargs) -> Pipeline:
    # The report is written first (validation.json lists the failures and the budget), then
    # the run fails: the budget prints even when a model's weights are missing.
    return Pipeline(
        [
            *(model_checks(m) for m in models),
            Node(
                summarize_validation,
                inputs=[f"{m}_validation" for m in models],
                outputs="validation_checks",
                name="summarize_validation",
            ),
            Node(
                add_budget,
                inputs=["validation_checks", "params:budget", *(f"{m}_budget" for m in models)],
                outputs="validation_report",
                name="add_budget",
            ),
            Node(fail_on_errors, inputs="validation_report", outputs=None, name="fail_on_errors"),
        ],
        tags="validate",
    )
