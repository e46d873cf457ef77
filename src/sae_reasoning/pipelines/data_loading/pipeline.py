"""data_loading pipeline: `<benchmark>_raw` -> `examples` -> `prompts`."""

from kedro.pipeline import Node, Pipeline

from sae_reasoning.pipelines.data_loading import nodes


def create_pipeline(**kwargs) -> Pipeline:
    normalize = [
        Node(
            getattr(nodes, f"normalize_{b}"),
            inputs=f"{b}_raw",
            outputs=f"{b}_normalized",
            name=f"normalize_{b}",
            tags=["data_loading"],
        )
        for b in ("gsm8k", "math", "logic")
    ]
    return Pipeline(
        [
            *normalize,
            Node(
                nodes.select_examples,
                inputs=["gsm8k_normalized", "math_normalized", "logic_normalized",
                        "params:data_loading"],
                outputs=["examples", "few_shot_examples"],
                name="select_examples",
                tags=["data_loading"],
            ),
            Node(
                nodes.make_prompts,
                inputs=["examples", "few_shot_examples", "params:data_loading"],
                outputs="prompts",
                name="make_prompts",
                tags=["data_loading"],
            ),
        ]
    )
