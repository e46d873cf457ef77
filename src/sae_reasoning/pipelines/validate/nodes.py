from sae_reasoning import preflight


def check_model(model, model_params: dict, capture: dict, causal: dict, sae_training: dict) -> dict:
    return preflight.check_model(model, model_params, capture, causal, sae_training)


def summarize_validation(*results: dict) -> dict:
    return preflight.summarize(list(results))
