"""The trainer's state (model, optimiser, position in the data, dead-latent counters,
history, RNG): fresh, restored from a checkpoint, or as a checkpoint to save. Restoring
it gives bit-identical weights to a run that was never interrupted (on CPU)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sae_reasoning.sae.architectures import TrainingSAE
from sae_reasoning.sae.checkpoints import CHECKPOINT_FORMAT
from sae_reasoning.sae.model import SAEConfig
from sae_reasoning.sae.train_config import TrainingDivergedError
from sae_reasoning.sae.train_setup import (
    adam,
    expected_norm_scaling_factor,
    fresh_sae,
    geometric_median,
)


@dataclass
class TrainState:
    sae: TrainingSAE
    optimizer: torch.optim.Optimizer
    scale: float
    step: int = 0
    tokens_seen: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed_s: float = 0.0
    tokens_since_fired: torch.Tensor | None = None
    history: dict[str, list] = field(default_factory=dict)
    # The trainer's own RNG (init; later architectures' resampling): never the global one.
    generator: torch.Generator = field(default_factory=torch.Generator)


# l1_loss: the sparsity term (L1 for relu, L0 for jumprelu, 0 for the TopK family), and
# l1_coefficient its coefficient; aux_loss: AuxK (+ matryoshka's inner prefix losses).
HISTORY_KEYS = (
    "step",
    "tokens",
    "loss",
    "mse",
    "l1_loss",
    "aux_loss",
    "l0",
    "explained_variance",
    "dead_fraction",
    "lr",
    "l1_coefficient",
)


def init_state(
    activations, hook_point, config, d_in, device, select, sae_cfg: SAEConfig
) -> TrainState:
    sample = next(
        iter(
            activations.iter_batches(
                hook_point,
                config.init_sample_tokens,
                shuffle=True,
                seed=config.seed + 1_000_003,
                buffer_tokens=config.shuffle_buffer_tokens,
                exclude=config.exclude,
                select_examples=select,
            )
        )
    )
    if not torch.isfinite(sample).all():
        raise TrainingDivergedError(
            f"non-finite activations in the initialisation sample of {hook_point} (step 0)"
        )
    scale = 1.0
    if config.normalize_activations == "expected_average_only_in":
        scale = expected_norm_scaling_factor(float(sample.norm(dim=1).mean()), d_in)
    sample = sample * scale
    gen = torch.Generator().manual_seed(config.seed)
    sae = fresh_sae(sae_cfg, config)
    sae.initialize_weights(gen, encoder_scale=config.encoder_init_scale)
    with torch.no_grad():
        sae.initialize_training(config)  # e.g. jumprelu's threshold
        if config.b_dec_init == "geometric_median":
            sae.b_dec.copy_(geometric_median(sample))
        elif config.b_dec_init == "mean":
            sae.b_dec.copy_(sample.mean(0))
    sae.to(device)
    return TrainState(
        sae=sae,
        optimizer=adam(sae, config, device),
        scale=scale,
        tokens_since_fired=torch.zeros(sae.d_sae, dtype=torch.long, device=device),
        history={k: [] for k in HISTORY_KEYS},
        generator=gen,
    )


def restore_state(ckpt: dict, config, device, sae_cfg: SAEConfig) -> TrainState:
    sae = fresh_sae(sae_cfg, config)
    sae.load_state_dict(ckpt["sae"])
    sae.to(device)
    opt = adam(sae, config, device)
    opt.load_state_dict(ckpt["optimizer"])
    gen = torch.Generator()
    gen.set_state(ckpt["rng"]["generator"])
    return TrainState(
        generator=gen,
        sae=sae,
        optimizer=opt,
        scale=float(ckpt["scale"]),
        step=int(ckpt["step"]),
        tokens_seen=int(ckpt["tokens_seen"]),
        epoch=int(ckpt["epoch"]),
        batch_in_epoch=int(ckpt["batch_in_epoch"]),
        elapsed_s=float(ckpt["elapsed_s"]),
        tokens_since_fired=ckpt["tokens_since_fired"].to(device),
        history={k: list(v) for k, v in ckpt["history"].items()},
    )


def checkpoint_state(s: TrainState, fingerprint: str) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "step": s.step,
        "tokens_seen": s.tokens_seen,
        "epoch": s.epoch,
        "batch_in_epoch": s.batch_in_epoch,
        "elapsed_s": s.elapsed_s,
        "scale": s.scale,
        "sae": {k: v.detach().cpu() for k, v in s.sae.state_dict().items()},
        "optimizer": s.optimizer.state_dict(),
        "tokens_since_fired": s.tokens_since_fired.cpu(),
        "history": s.history,
        "rng": {"generator": s.generator.get_state()},
    }
