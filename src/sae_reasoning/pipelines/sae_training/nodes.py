"""sae_training nodes: thin wrappers over `sae_reasoning.sae`.

`train_sae` returns lazy training jobs; the `sae` dataset (SAEDataset) runs them when it
saves, reusing finished SAEs whose fingerprint matches (see sae/training_job.py).
"""

from __future__ import annotations

import logging
from typing import Any

from matplotlib.figure import Figure

from sae_reasoning.activations.store import ActivationSet
from sae_reasoning.sae.metrics import evaluate_sae as _evaluate
from sae_reasoning.sae.model import SAE
from sae_reasoning.sae.plots import plot_training_curves
from sae_reasoning.sae.train import TrainingConfig, count_tokens, resolve_device
from sae_reasoning.sae.training_job import SAETrainingJob

logger = logging.getLogger(__name__)

DEFAULT_HOOK_TEMPLATE = "blocks.{layer}.hook_resid_post"
TRAINING_FIELDS = ("steps", "tokens_seen", "n_train_tokens", "epochs_seen", "train_time_s",
                   "tokens_per_s", "device", "norm_scaling_factor", "fingerprint")


def hook_points_for(model: dict[str, Any], sae_training: dict[str, Any]) -> list[str]:
    """Hook points to train on: the template filled with each of the model's `layers`."""
    layers = model.get("layers")
    if not layers:
        raise ValueError("params:model needs `layers` (e.g. [15]) to choose SAE hook points")
    template = sae_training.get("hook_point_template", DEFAULT_HOOK_TEMPLATE)
    return [template.format(layer=int(layer)) for layer in layers]


def train_sae(activations: ActivationSet, sae_training: dict[str, Any],
              model: dict[str, Any]) -> dict[str, SAETrainingJob]:
    """One training job per configured hook point (run by the `sae` dataset on save)."""
    config = TrainingConfig.from_params(sae_training)
    hooks = hook_points_for(model, sae_training)
    missing = [h for h in hooks if h not in activations.hook_points]
    if missing:
        raise ValueError(f"no activations for hook points {missing} in {activations.root}; "
                         f"captured: {activations.hook_points}")
    return {hook: SAETrainingJob(activations, hook, config) for hook in hooks}


def evaluate_sae(sae: dict[str, SAE], activations: ActivationSet,
                 sae_training: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Held-out metrics per hook point (mse, fvu, explained_variance, l0, dead/dense fraction)."""
    config = TrainingConfig.from_params(sae_training)
    split = config.split
    select = split.heldout if split.every is not None else None
    name = "heldout" if select is not None else "train (no held-out split configured)"
    device = resolve_device(config.device)
    out = {}
    for hook, module in sae.items():
        if select is not None and count_tokens(activations, hook, config.exclude, select) == 0:
            raise ValueError(f"{hook}: the held-out split (example_index % {split.every} == 0) is "
                             "empty; capture more examples or lower eval_every")
        batches = activations.iter_batches(hook, config.eval_batch_size, shuffle=False,
                                           exclude=config.exclude, select_examples=select)
        metrics = _evaluate(module, batches, dense_threshold=config.dense_threshold, device=device)
        module.to("cpu")
        trained = module.training_summary or {}
        out[hook] = {"split": name, "eval_every": split.every, **metrics,
                     "d_in": module.d_in, "architecture": module.cfg.architecture,
                     "training": {k: trained.get(k) for k in TRAINING_FIELDS}}
        logger.info("SAE %s on %s: explained variance %.3f, L0 %.1f, dead %.1f%%", hook, name,
                    metrics["explained_variance"], metrics["l0"], 100 * metrics["dead_fraction"])
    return out


def plot_sae_training(sae: dict[str, SAE]) -> Figure:
    """Loss, MSE, L0 and dead fraction vs training tokens, one line per hook point."""
    return plot_training_curves({hook: m.training_log or {} for hook, m in sae.items()})
