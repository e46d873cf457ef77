from kedro.pipeline import Node, Pipeline


def create_pipeline(models: list[str] = (), **kwargs) -> Pipeline:
    from sae_reasoning.pipelines.validate.nodes import check_model, fail_on_errors, summarize_validation

    checks = [Node(check_model, [f"{m}.model", f"params:models.{m}", "params:capture", "params:causal",
                                  "params:sae_training"], f"{m}.validation",
                   name=f"check_model", namespace=m) for m in models]
    # The report is written first (validation.json lists the failures), then the run fails.
    return Pipeline([*checks,
                     Node(summarize_validation, [f"{m}.validation" for m in models],
                          "validation_report", name="summarize_validation"),
                     Node(fail_on_errors, "validation_report", None, name="fail_on_errors")])
