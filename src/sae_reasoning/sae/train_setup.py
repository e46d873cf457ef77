"""The trainer's set-up: device, schedules, optimiser, initialisation, the batch stream and
the BatchTopK family's threshold calibration (each a small function train.py calls)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import torch

from sae_reasoning.activations.store import ActivationSet
from sae_reasoning.sae.architectures import TrainingSAE, build_sae
from sae_reasoning.sae.calibration import calibrate_topk_threshold
from sae_reasoning.sae.model import SAE, SAEConfig
from sae_reasoning.sae.train_config import TrainingConfig
from sae_reasoning.sae.training_data import train_selection


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld's algorithm (float64)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-12)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        done = (y_new - y).norm() <= tol * y.norm().clamp_min(1.0)
        y = y_new
        if done:
            break
    return y.float()


def lr_factor(step: int, total: int, warm_up: int, decay: int) -> float:
    """Linear warm-up over `warm_up` steps, linear decay to 0 over the last `decay` steps."""
    f = 1.0
    if warm_up > 0:
        f = min(f, (step + 1) / warm_up)
    if decay > 0:
        f = min(f, (total - step) / decay)
    return max(f, 0.0)


def expected_norm_scaling_factor(mean_norm: float, d_in: int) -> float:
    """SAELens `expected_average_only_in`: the s with E||s * x|| = sqrt(d_in)."""
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise ValueError(f"cannot normalise activations with mean norm {mean_norm}")
    return math.sqrt(d_in) / mean_norm


def hook_layer(hook_point: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", hook_point)
    return int(m.group(1)) if m else None


def batch_stream(
    activations: ActivationSet,
    hook_point: str,
    config: TrainingConfig,
    select,
    epoch: int,
    skip: int,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(epoch, index in epoch, batch) forever; epoch e is shuffled with seed + e."""
    while True:
        n = 0
        for i, batch in enumerate(
            activations.iter_batches(
                hook_point,
                config.batch_size,
                shuffle=True,
                seed=config.seed + epoch,
                buffer_tokens=config.shuffle_buffer_tokens,
                exclude=config.exclude,
                drop_last=True,
                select_examples=select,
            )
        ):
            n += 1
            if i >= skip:
                yield epoch, i, batch
        if n == 0:
            raise ValueError(
                f"no full batch of {config.batch_size} training tokens for {hook_point}"
            )
        epoch, skip = epoch + 1, 0


def adam(sae: SAE, config: TrainingConfig, device: torch.device) -> torch.optim.Adam:
    # The fused kernel (CPU and CUDA) is ~4x faster than the default on CPU here.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(sae.parameters(), lr=config.lr, betas=config.adam_betas, fused=fused)


def fresh_sae(sae_cfg: SAEConfig, config: TrainingConfig) -> TrainingSAE:
    return build_sae(
        sae_cfg.replace(device="cpu", normalize_activations=config.normalize_activations)
    )


def calibrate(
    sae: SAE,
    activations: ActivationSet,
    hook_point: str,
    config: TrainingConfig,
    device: torch.device,
) -> dict[str, Any]:
    """Inference threshold of a finished BatchTopK-family SAE (raw units) set to L0 = k on
    `calibration_tokens` training tokens: a fixed draw with its own seed, so straight and
    resumed runs calibrate on the same tokens."""
    batches = activations.iter_batches(
        hook_point,
        config.batch_size,
        shuffle=True,
        seed=config.seed + 2_000_003,
        buffer_tokens=config.shuffle_buffer_tokens,
        exclude=config.exclude,
        select_examples=train_selection(activations, config.sources, config.split.train),
    )
    sae.to(device)
    result = calibrate_topk_threshold(sae, batches, config.calibration_tokens)
    sae.to("cpu")
    sae.cfg.metadata.update(
        inference_l0_train=result["inference_l0_train"],
        calibration_tokens=result["calibration_tokens"],
    )
    return result
