from kedro.pipeline import Node, Pipeline


def create_pipeline(**kwargs) -> Pipeline:
    from sae_reasoning.pipelines.causal.nodes import (
        analyse_features,
        feature_dashboards,
        train_probes,
    )

    return Pipeline(
        [
            Node(
                analyse_features,
                inputs=[
                    "model",
                    "sae",
                    "prompts",
                    "activations",
                    "baseline_scores",
                    "params:causal",
                ],
                outputs=[
                    "feature_effects",
                    "feature_ranking",
                    "causal_summary",
                    "circuit",
                    "feature_contexts",
                ],
                name="analyse_features",
            ),
            Node(
                train_probes,
                inputs=[
                    "model",
                    "sae",
                    "prompts",
                    "activations",
                    "baseline_scores",
                    "feature_ranking",
                    "causal_summary",
                    "params:probes",
                ],
                outputs="probe_results",
                name="train_probes",
            ),
            # Dashboards in the causal stage: they need this namespace's model, SAE and capture
            # store (its device slot) and read the analysed features from the outputs above.
            Node(
                feature_dashboards,
                inputs=[
                    "model",
                    "sae",
                    "activations",
                    "feature_effects",
                    "feature_ranking",
                    "causal_summary",
                    "circuit",
                    "params:dashboards",
                    "params:causal.massive_activations",
                ],
                outputs="feature_dashboards",
                name="feature_dashboards",
            ),
        ],
        tags="causal",
    )
