from kedro.pipeline import Node, Pipeline


def create_pipeline(**kwargs) -> Pipeline:
    from sae_reasoning.pipelines.capture.nodes import (
        capture_activations,
        capture_corpus,
        score_baseline,
    )

    return Pipeline(
        [
            Node(
                capture_activations,
                ["model", "prompts", "params:capture", "params:model", "activation_store"],
                "activations",
                name="capture_activations",
            ),
            Node(
                capture_corpus,
                [
                    "model",
                    "sae_corpus",
                    "examples",
                    "params:capture",
                    "params:model",
                    "params:data_loading",
                    "corpus_activation_store",
                ],
                "corpus_activations",
                name="capture_corpus",
            ),
            Node(
                score_baseline,
                ["model", "prompts", "params:capture", "baseline_scores_store"],
                "baseline_scores",
                name="score_baseline",
            ),
        ],
        tags="capture",
    )  # the stage's tag: `kedro run --tags=capture`, kedro-viz's tag filter
