from kedro.pipeline import Node, Pipeline


def create_pipeline(**kwargs) -> Pipeline:
    from sae_reasoning.pipelines.causal.nodes import analyse_features

    return Pipeline([
        Node(analyse_features, ["model", "sae", "prompts", "activations", "baseline_scores", "params:causal"],
             ["feature_effects", "feature_ranking", "causal_summary", "circuit", "feature_contexts"],
             name="analyse_features"),
    ])
