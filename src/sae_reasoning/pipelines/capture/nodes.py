"""Thin nodes: the work lives in sae_reasoning.activations and sae_reasoning.baseline."""

from __future__ import annotations

import logging

import pandas as pd

from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.baseline import BaselineJob
from sae_reasoning.generation import GenerationSettings
from sae_reasoning.models.loading import ModelHandle

log = logging.getLogger(__name__)


def capture_activations(model: ModelHandle, prompts: pd.DataFrame, capture: dict, model_params: dict) -> CaptureJob:
    """A lazy job; the activation dataset runs it, streaming shards to disk."""
    if len(prompts) == 0:
        raise ValueError(f"capture {model.name}: the prompts table (dataset `prompts`) is empty")
    return CaptureJob(
        model=model, prompts=prompts, layers=list(model_params["layers"]),
        dtype=capture.get("dtype", "float32"), batch_tokens=int(capture.get("batch_tokens", 4096)),
        shard_tokens=int(capture.get("shard_tokens", 16384)),
        max_pending_batches=int(capture.get("max_pending_batches", 2)),
    )


def score_baseline(model: ModelHandle, prompts: pd.DataFrame, capture: dict) -> BaselineJob:
    """A lazy job: the scores dataset runs it unless its file was made by the same job.

    `capture.solution_generation` (max_new_tokens, stop, batch_size) sets how the model
    writes its own solutions on worked-solution prompts, whose accuracy comes from them.
    """
    generate = int(capture.get("max_new_tokens", 12)) if capture.get("generate", True) else 0
    return BaselineJob(model=model, prompts=prompts, batch_size=int(capture.get("batch_size", 16)),
                       generate_tokens=generate,
                       solution=GenerationSettings.from_params(capture.get("solution_generation")))
