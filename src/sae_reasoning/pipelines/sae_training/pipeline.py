"""sae_training: activations -> SAE per hook point (+ held-out metrics, spliced evals with the
model on held-out prompts, the planted-dictionary check, training curve).

Un-namespaced; the registry makes one copy per model namespace, so `activations`, `sae`,
... become `<model>.activations`, `<model>.sae`, ... (catalog factories).
"""

from kedro.pipeline import Node, Pipeline

from sae_reasoning.pipelines.sae_training.nodes import evaluate_sae, plot_sae_training, train_sae


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_sae,
                inputs=[
                    "activations",
                    "corpus_activations",
                    "params:sae_training",
                    "params:model",
                    "model",
                    "sae_store",
                ],
                outputs="sae",
                name="train_sae",
            ),
            Node(
                evaluate_sae,
                inputs=["sae", "activations", "params:sae_training", "model", "prompts"],
                outputs="sae_metrics",
                name="evaluate_sae",
            ),
            Node(
                plot_sae_training,
                inputs="sae",
                outputs="sae_training_curve",
                name="plot_sae_training",
            ),
        ],
        tags="sae_training",
    )
