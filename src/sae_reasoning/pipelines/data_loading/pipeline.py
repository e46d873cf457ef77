"""data_loading pipeline: `<benchmark>_raw` -> `examples` -> `prompts`."""

from kedro.pipeline import Node, Pipeline

from sae_reasoning.benchmarks.parsing import BENCHMARKS
from sae_reasoning.pipelines.data_loading.nodes import make_prompts, normalizer, select_examples


def create_pipeline(**kwargs) -> Pipeline:
    normalize = [
        Node(normalizer(b), inputs=f"{b}_raw", outputs=f"{b}_normalized", name=f"normalize_{b}")
        for b in BENCHMARKS
    ]
    return Pipeline(
        [
            *normalize,
            Node(
                select_examples,
                inputs=[
                    "gsm8k_normalized",
                    "math_normalized",
                    "logic_normalized",
                    "params:data_loading",
                ],
                outputs=["examples", "few_shot_examples"],
                name="select_examples",
            ),
            Node(
                make_prompts,
                inputs=["examples", "few_shot_examples", "params:data_loading"],
                outputs="prompts",
                name="make_prompts",
            ),
        ],
        tags="data_loading",
    )
