from sae_reasoning import preflight


def check_model(model, model_params: dict, capture: dict, causal: dict, sae_training: dict) -> dict:
    return preflight.check_model(model, model_params, capture, causal, sae_training)


def summarize_validation(*results: dict) -> dict:
    """The report (saved as validation_report, failures included)."""
    return preflight.report(list(results))


def fail_on_errors(validation_report: dict) -> None:
    """Fails the run when a model failed; runs after the report has been written."""
    preflight.raise_on_failure(validation_report)
