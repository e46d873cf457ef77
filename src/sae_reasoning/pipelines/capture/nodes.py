"""Thin nodes: the work lives in sae_reasoning.activations and sae_reasoning.scoring."""

from __future__ import annotations

import pandas as pd

from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.models.loading import ModelHandle
from sae_reasoning.scoring import answers_match, encode_prompts, greedy_answers, score_conditions


def capture_activations(model: ModelHandle, prompts: pd.DataFrame, capture: dict, model_params: dict) -> CaptureJob:
    """A lazy job; the activation dataset runs it, streaming shards to disk."""
    if len(prompts) == 0:
        raise ValueError("capture: the prompts table is empty")
    return CaptureJob(
        model=model, prompts=prompts, layers=list(model_params["layers"]),
        dtype=capture.get("dtype", "float32"), batch_size=int(capture.get("batch_size", 16)),
        shard_tokens=int(capture.get("shard_tokens", 65536)),
    )


def score_baseline(model: ModelHandle, prompts: pd.DataFrame, capture: dict) -> pd.DataFrame:
    """Each example's clean score: gold log-prob, greedy exact match, and the model's own answer."""
    lm = model.load()
    encoded = encode_prompts(lm.tokenizer, prompts)
    batch_size = int(capture.get("batch_size", 16))
    scores = score_conditions(lm, encoded, batch_size=batch_size, progress=f"baseline {model.name}")["clean"]
    if capture.get("generate", True):
        generated = greedy_answers(lm, encoded, batch_size=batch_size,
                                   max_new_tokens=int(capture.get("max_new_tokens", 12)))
        scores = scores.merge(generated, on="row")
        answers = prompts.reset_index(drop=True)["answer"]
        scores["answer"] = answers.loc[scores["row"]].to_numpy()
        scores["generated_correct"] = [answers_match(g, a) for g, a in zip(scores["generated"], scores["answer"])]
    return scores.assign(model=model.name)
