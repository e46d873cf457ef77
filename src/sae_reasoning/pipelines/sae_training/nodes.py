"""sae_training nodes: thin wrappers over `sae_reasoning.sae`.

`train_sae` trains (or reuses, or loads from `sae_source`) each hook point's SAE in the
`sae_store` handle, so the work shows in the node's timing; the `sae` dataset writes the
folders (see sae/training_job.py and datasets/sae_store.py).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from sae_reasoning.activations.store import ActivationSet
from sae_reasoning.models.loading import ModelHandle
from sae_reasoning.sae.ground_truth import planted_dictionary_recovery
from sae_reasoning.sae.metrics import evaluate_sae as _evaluate
from sae_reasoning.sae.model import SAE
from sae_reasoning.sae.plots import plot_training_curves
from sae_reasoning.sae.pretrained import PretrainedSAEJob, parse_sae_sources
from sae_reasoning.sae.sae_folder import StoredSAE
from sae_reasoning.sae.spliced_eval import (
    SplicedEvalConfig,
    heldout_texts,
    spliced_eval,
    training_norm_cut,
)
from sae_reasoning.sae.train import TrainingConfig, count_tokens, resolve_device
from sae_reasoning.sae.training_data import training_set
from sae_reasoning.sae.training_job import SAETrainingJob

logger = logging.getLogger(__name__)

DEFAULT_HOOK_TEMPLATE = "blocks.{layer}.hook_resid_post"
TRAINING_FIELDS = (
    "steps",
    "tokens_seen",
    "n_train_tokens",
    "epochs_seen",
    "train_time_s",
    "n_train_tokens_by_source",
    "sources",  # what training read: corpus, benchmarks
    "tokens_per_s",
    "device",
    "norm_scaling_factor",
    "fingerprint",
    # TopK family: k and the inference threshold calibrated so that L0 = k
    "k",
    "inference_l0_train",
    "topk_threshold",
    "topk_threshold_ema",
    "calibration_tokens",
    "source",
)  # a pretrained SAE's provenance (sae/pretrained.py)


def hook_points_for(model: dict[str, Any], sae_training: dict[str, Any]) -> list[str]:
    """Hook points to train on: the template filled with each of the model's `layers`."""
    layers = model.get("layers")
    if not layers:
        raise ValueError("params:model needs `layers` (e.g. [15]) to choose SAE hook points")
    template = sae_training.get("hook_point_template", DEFAULT_HOOK_TEMPLATE)
    return [template.format(layer=int(layer)) for layer in layers]


def training_jobs(
    activations: ActivationSet,
    corpus_activations: ActivationSet,
    sae_training: dict[str, Any],
    model: dict[str, Any],
    language_model: ModelHandle | None = None,
) -> dict[str, SAETrainingJob | PretrainedSAEJob]:
    """One job per configured hook point, on the corpus and/or benchmark activations as
    `sae_training.sources` says. `language_model` (lazy, no weights): its id or path labels
    the SAEs (cfg.json model_name)."""
    config = TrainingConfig.from_params(sae_training)
    hooks = hook_points_for(model, sae_training)
    missing = [h for h in hooks if h not in activations.hook_points]
    if missing:
        raise ValueError(
            f"no activations for hook points {missing} in {activations.root}; "
            f"captured: {activations.hook_points}"
        )
    # Hook points named in models.<ns>.sae_source load a pretrained SAE instead of training.
    name = activations.root.name
    sources = parse_sae_sources(model, hooks, name)
    data = training_set(
        activations, corpus_activations, config.sources, [h for h in hooks if h not in sources]
    )
    model_id = (
        language_model.spec.pretrained_model_name_or_path if language_model is not None else None
    )
    return {
        hook: PretrainedSAEJob(hook, sources[hook], activations.d_model(hook), name)
        if hook in sources
        else SAETrainingJob(data, hook, config, model_name=model_id)
        for hook in hooks
    }


def make_saes(
    jobs: dict[str, SAETrainingJob | PretrainedSAEJob], sae_store
) -> dict[str, SAE | StoredSAE]:
    """Each job's SAE, made in the store's folder (reused, trained or loaded), or the
    StoredSAE the store's URL already holds."""
    return {
        hook: sae_store.stored(hook, job.fingerprint) or job.make_sae(sae_store.folder(hook))
        for hook, job in jobs.items()
    }


def train_sae(
    activations: ActivationSet,
    corpus_activations: ActivationSet,
    sae_training: dict[str, Any],
    model: dict[str, Any],
    language_model: ModelHandle | None,
    sae_store,
) -> dict[str, SAE | StoredSAE]:
    """{hook point: SAE} trained here (or reused from `sae_store`), for the `sae` dataset."""
    return make_saes(
        training_jobs(activations, corpus_activations, sae_training, model, language_model),
        sae_store,
    )


def evaluate_sae(
    sae: dict[str, SAE],
    activations: ActivationSet,
    sae_training: dict[str, Any],
    model: ModelHandle,
    prompts: pd.DataFrame,
) -> dict[str, dict[str, Any]]:
    """Per hook point: held-out metrics (mse, fvu, explained_variance, l0, dead/dense
    fraction), `spliced` (CE loss recovered, KL divergence with the SAE in the model, on
    held-out prompts) and `planted_dictionary` (the trainer's ground-truth check with these
    settings); the last two are switched off by setting their parameter to null / false."""
    config = TrainingConfig.from_params(sae_training)
    split = config.split
    select = split.heldout if split.every is not None else None
    name = "heldout" if select is not None else "train (no held-out split configured)"
    device = resolve_device(config.device)
    spliced_params = sae_training.get("spliced_eval")
    planted = planted_dictionary_check(config) if sae_training.get("planted_dictionary") else None
    out = {}
    for hook, module in sae.items():
        if select is not None and count_tokens(activations, hook, config.exclude, select) == 0:
            raise ValueError(
                f"{hook}: the held-out split (example_index % {split.every} == 0) is "
                "empty; capture more examples or lower eval_every"
            )
        batches = activations.iter_batches(
            hook,
            config.eval_batch_size,
            shuffle=False,
            exclude=config.exclude,
            select_examples=select,
        )
        metrics = _evaluate(module, batches, dense_threshold=config.dense_threshold, device=device)
        trained = module.training_summary or {}
        out[hook] = {
            "split": name,
            "eval_every": split.every,
            **metrics,
            "d_in": module.d_in,
            "architecture": module.cfg.architecture,
            "training": {k: trained.get(k) for k in TRAINING_FIELDS},
        }
        if spliced_params is not None:
            out[hook]["spliced"] = _spliced(
                module,
                hook,
                model,
                prompts,
                activations,
                config,
                SplicedEvalConfig.from_params(spliced_params),
            )
        if planted is not None:
            out[hook]["planted_dictionary"] = planted
        module.to("cpu")
        logger.info(
            "SAE %s on %s: explained variance %.3f, L0 %.1f, dead %.1f%%%s",
            hook,
            name,
            metrics["explained_variance"],
            metrics["l0"],
            100 * metrics["dead_fraction"],
            f", CE loss recovered {out[hook]['spliced']['ce_loss_score']:.3f}"
            if "spliced" in out[hook]
            else "",
        )
    return out


def _spliced(
    module: SAE,
    hook: str,
    model: ModelHandle,
    prompts: pd.DataFrame,
    activations: ActivationSet,
    config: TrainingConfig,
    params: SplicedEvalConfig,
) -> dict[str, Any]:
    lm = model.load()
    texts = heldout_texts(prompts, config.eval_every, params.n_prompts, params.seed)
    max_norm = training_norm_cut(activations, hook, config.max_norm_ratio)
    result = spliced_eval(
        lm,
        module,
        hook,
        texts,
        max_tokens=params.max_tokens,
        batch_size=params.batch_size,
        exclude_first_position=config.exclude_first_position,
        max_norm=max_norm,
    )
    return {**result, "prompts": "held-out rows (row % eval_every == 0)", "max_norm": max_norm}


def planted_dictionary_check(config: TrainingConfig) -> dict[str, Any]:
    """The ground-truth check (sae/ground_truth.py) with these training settings: fraction
    of planted directions recovered at cosine >= 0.9 (the figure for the report)."""
    result = planted_dictionary_recovery(replace(config, d_in=None, d_sae=None))
    best = sorted(result["best_cosine"])  # kept: sae.plots.plot_planted_recovery draws it
    result["best_cosine_quantiles"] = {
        q: best[min(len(best) - 1, int(q * len(best)))] for q in (0.0, 0.1, 0.5, 0.9)
    }
    logger.info(
        "planted dictionary: %.0f%% of directions recovered at cosine >= 0.9 (%s)",
        100 * result["fraction_recovered"],
        result["config"]["architecture"],
    )
    return result


def plot_sae_training(sae: dict[str, SAE]) -> Figure:
    """Loss, MSE, L0 and dead fraction vs training tokens, one line per hook point."""
    return plot_training_curves({hook: m.training_log or {} for hook, m in sae.items()})
