from kedro.pipeline import Node, Pipeline


def create_pipeline(models: list[str] = (), **kwargs) -> Pipeline:
    from sae_reasoning.pipelines.validate.nodes import (
        add_budget,
        check_model,
        fail_on_errors,
        plan_budget,
        summarize_validation,
    )

    shared = ["params:capture", "params:causal", "params:sae_training"]
    checks = [Node(check_model, [f"{m}.model", f"params:models.{m}", *shared], f"{m}.validation",
                   name="check_model", namespace=m) for m in models]
    plans = [Node(plan_budget, [f"{m}.model", f"params:models.{m}", *shared, "params:data_loading",
                                "params:budget"], f"{m}.budget", name="plan_budget", namespace=m)
             for m in models]
    # The report is written first (validation.json lists the failures and the budget), then
    # the run fails: the budget prints even when a model's weights are missing.
    return Pipeline([*checks, *plans,
                     Node(summarize_validation, [f"{m}.validation" for m in models],
                          "validation_checks", name="summarize_validation"),
                     Node(add_budget, ["validation_checks", "params:budget", *(f"{m}.budget" for m in models)],
                          "validation_report", name="add_budget"),
                     Node(fail_on_errors, "validation_report", None, name="fail_on_errors")],
                    tags="validate")
