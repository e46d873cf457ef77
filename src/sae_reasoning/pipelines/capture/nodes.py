"""Thin nodes: the work lives in sae_reasoning.activations and sae_reasoning.baseline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from sae_reasoning.activations.capture import CaptureJob, capture_into
from sae_reasoning.activations.corpus import CorpusCaptureJob, CorpusSource, EvaluationFilter
from sae_reasoning.baseline import BaselineJob
from sae_reasoning.datasets.scores import FingerprintedScores, StoredScores
from sae_reasoning.generation import GenerationSettings
from sae_reasoning.models.loading import ModelHandle

log = logging.getLogger(__name__)


def capture_activations(
    model: ModelHandle, prompts: pd.DataFrame, capture: dict, model_params: dict, activation_store
) -> dict:
    """Capture into the `activation_store` handle, streaming shards to disk (reusing and
    resuming folders there); the completed manifests, for the activation dataset."""
    if len(prompts) == 0:
        raise ValueError(f"capture {model.name}: the prompts table (dataset `prompts`) is empty")
    job = CaptureJob(
        model=model,
        prompts=prompts,
        layers=list(model_params["layers"]),
        dtype=capture.get("dtype", "float32"),
        batch_tokens=int(capture.get("batch_tokens", 4096)),
        shard_tokens=int(capture.get("shard_tokens", 16384)),
        max_pending_batches=int(capture.get("max_pending_batches", 2)),
    )
    return capture_into(job, activation_store)


def capture_corpus(
    model: ModelHandle,
    sae_corpus: Any,
    examples: pd.DataFrame,
    capture: dict,
    model_params: dict,
    data_loading: dict,
    corpus_activation_store,
) -> dict:
    """Capture the SAE training corpus (activations/corpus.py) into its store handle: rows of
    `capture.corpus.context_tokens` tokens up to `max_tokens`, evaluation questions left out."""
    settings = dict(capture.get("corpus") or {})
    unknown = sorted(set(settings) - {"max_tokens", "context_tokens", "text_column"})
    if unknown:
        raise ValueError(
            f"capture.corpus: unknown key(s) {unknown}; known: max_tokens, context_tokens, "
            "text_column"
        )
    fmt = data_loading.get("prompt_format") or {}
    source = CorpusSource(
        sae_corpus,
        text_column=str(settings.get("text_column", "text")),
        question_prefix=fmt.get("question_prefix", "Question: "),
        answer_prefix=fmt.get("answer_prefix", "Answer:"),
        exclude=EvaluationFilter(examples["question"]),
    )
    max_tokens = settings.get("max_tokens")
    job = CorpusCaptureJob(
        model=model,
        prompts=None,
        layers=list(model_params["layers"]),
        dtype=capture.get("dtype", "float32"),
        batch_tokens=int(capture.get("batch_tokens", 4096)),
        shard_tokens=int(capture.get("shard_tokens", 16384)),
        max_pending_batches=int(capture.get("max_pending_batches", 2)),
        corpus=source,
        context_tokens=int(settings.get("context_tokens", 512)),
        max_tokens=int(max_tokens) if max_tokens is not None else None,
    )
    return capture_into(job, corpus_activation_store)


def baseline_job(model: ModelHandle, prompts: pd.DataFrame, capture: dict) -> BaselineJob:
    """The baseline scoring job. `capture.solution_generation` (max_new_tokens, stop,
    batch_size) sets how the model writes its own solutions on worked-solution prompts,
    whose accuracy comes from them."""
    generate = int(capture.get("max_new_tokens", 12)) if capture.get("generate", True) else 0
    return BaselineJob(
        model=model,
        prompts=prompts,
        batch_size=int(capture.get("batch_size", 16)),
        generate_tokens=generate,
        solution=GenerationSettings.from_params(capture.get("solution_generation")),
    )


def score_baseline(
    model: ModelHandle, prompts: pd.DataFrame, capture: dict, baseline_scores_store
) -> FingerprintedScores | StoredScores:
    """Per-example baseline scores, unless the stored table was made by the same job (then
    the `baseline_scores_store` handle says so and nothing is scored)."""
    return score_into(baseline_job(model, prompts, capture), baseline_scores_store)


def score_into(job: BaselineJob, store) -> FingerprintedScores | StoredScores:
    """The job's table with its fingerprint, or the store's StoredScores when it has it."""
    fingerprint = job.fingerprint()
    return store.stored(fingerprint, job.model.name) or FingerprintedScores(job.run(), fingerprint)
