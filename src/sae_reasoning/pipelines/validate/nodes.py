from sae_reasoning import preflight


def check_model(model, model_params: dict) -> dict:
    return preflight.check_model(model, model_params)


def summarize_validation(*results: dict) -> dict:
    return preflight.summarize(list(results))
