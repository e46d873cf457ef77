"""Thin nodes: the work lives in sae_reasoning.activations and sae_reasoning.scoring."""

from __future__ import annotations

import logging

import pandas as pd

from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.models.loading import ModelHandle
from sae_reasoning.benchmarks.parsing import answers_match
from sae_reasoning.scoring import encode_prompts, score_conditions

log = logging.getLogger(__name__)


def capture_activations(model: ModelHandle, prompts: pd.DataFrame, capture: dict, model_params: dict) -> CaptureJob:
    """A lazy job; the activation dataset runs it, streaming shards to disk."""
    if len(prompts) == 0:
        raise ValueError(f"capture {model.name}: the prompts table (dataset `prompts`) is empty")
    return CaptureJob(
        model=model, prompts=prompts, layers=list(model_params["layers"]),
        dtype=capture.get("dtype", "float32"), batch_tokens=int(capture.get("batch_tokens", 8192)),
        shard_tokens=int(capture.get("shard_tokens", 16384)),
        max_pending_batches=int(capture.get("max_pending_batches", 2)),
    )


def score_baseline(model: ModelHandle, prompts: pd.DataFrame, capture: dict) -> pd.DataFrame:
    """Each example's clean score: gold log-prob, greedy exact match, and the model's own answer."""
    log.info("baseline %s: scoring all prompts (scores are not cached across runs; "
             "`kedro run --only-missing-outputs` skips this node when its output exists)", model.name)
    lm = model.load()
    encoded = encode_prompts(lm.tokenizer, prompts)
    generate = int(capture.get("max_new_tokens", 12)) if capture.get("generate", True) else 0
    scores = score_conditions(lm, encoded, batch_size=int(capture.get("batch_size", 16)),
                              progress=f"baseline {model.name}", generate_tokens=generate)["clean"]
    if generate:
        table = prompts.reset_index(drop=True)
        scores["answer"] = table["answer"].loc[scores["row"]].to_numpy()
        scores["generated_correct"] = [
            answers_match(g, a, t) for g, a, t in
            zip(scores["generated"], scores["answer"], table["answer_type"].loc[scores["row"]])]
    return scores.assign(model=model.name)
