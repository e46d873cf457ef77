"""A compact SAE trainer over an `ActivationSet` (bounded memory: batches stream from disk).

Recipe (Bricken et al. 2023 / Anthropic's April 2024 update, in SAELens's conventions):

  x      <- x * s,  s = sqrt(d_in) / E||x||   ("expected_average_only_in"; folded out at the end)
  loss   =  mean_tokens ||x - x_hat||^2  +  architecture's terms (architectures/):
              relu      + l1 * mean_tokens sum_i f_i ||W_dec[i]||
              jumprelu  + l0 * mean_tokens #{i: f_i > 0}   (straight-through estimator)
              topk, batchtopk, matryoshka_batchtopk
                        + AuxK (Gao et al.) once latents are dead; matryoshka also adds
                          the reconstruction error of every nested prefix of latents
  Adam; decoder rows kept at unit norm (gradient component along each row removed before
  the step, rows renormalised after it); b_dec starts at the geometric median (or mean)
  of a sample; LR: linear warm-up, constant, linear decay to 0 over the last fraction;
  L1 coefficient: linear warm-up. A latent is dead when it has not fired in the last
  `dead_window_tokens` training tokens. BatchTopK family: the inference threshold is
  calibrated at the end on `calibration_tokens` training tokens so that inference L0 = k
  (calibration.py).

Data: the folders of `sources` (training_data.py): every corpus row, and every benchmark
example whose example_index % eval_every != 0 (the rest is held out for
`metrics.evaluate_sae`), with massive-activation rows removed; shuffled together. Epoch e
shuffles with seed + e, so the stream is a pure function of (config, epoch, batch index):
a checkpoint (train_state.py) every `checkpoint_every` steps lets a killed run resume to
bit-identical weights on CPU.

This file is the loop; its pieces: train_config.py (TrainingConfig), train_setup.py
(schedules, optimiser, init, data stream), train_state.py + checkpoints.py (resume),
fingerprint.py (what identifies a run).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sae_reasoning.activations.store import ActivationSet
from sae_reasoning.ledger import add_tokens
from sae_reasoning.sae.architectures import (
    StepOutput,
    TrainHParams,
    TrainingSAE,
    build_sae,
    sae_class,
)
from sae_reasoning.sae.checkpoints import (
    CHECKPOINT_FORMAT,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from sae_reasoning.sae.fingerprint import fingerprint_inputs, fingerprint_of
from sae_reasoning.sae.model import SAEConfig
from sae_reasoning.sae.train_config import (
    HeldOutSplit,
    TrainingConfig,
    TrainingDivergedError,
    TrainingResult,
)
from sae_reasoning.sae.train_setup import (
    batch_stream,
    calibrate,
    hook_layer,
    lr_factor,
    resolve_device,
)
from sae_reasoning.sae.train_state import (
    HISTORY_KEYS,
    TrainState,
    checkpoint_state,
    init_state,
    restore_state,
)
from sae_reasoning.sae.training_data import count_tokens, tokens_by_source, train_selection

# Imported from here by the pipeline, the training job and the tests.
__all__ = [
    "TrainingConfig",
    "TrainingResult",
    "TrainingDivergedError",
    "HeldOutSplit",
    "train_sae",
    "train_step",
    "fingerprint_inputs",
    "fingerprint_of",
    "count_tokens",
    "resolve_device",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Plan:
    """What a run fixes before its first step."""

    hook_point: str
    d_in: int
    device: torch.device
    n_train: int
    total_steps: int
    warm_up: int
    decay: int
    l1_warm_up: int
    stop: int  # total_steps, or stop_at_step when earlier
    ckpt_dir: Path | None
    fingerprint: str


def train_step(
    sae: TrainingSAE,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    lr: float,
    hp: TrainHParams,
    dead: torch.Tensor,
    step: int,
    hook_point: str,
    last_ckpt,
) -> StepOutput:
    """One Adam step on a (normalised) batch; returns the model's StepOutput."""
    for group in opt.param_groups:
        group["lr"] = lr
    out = sae.training_loss(x, hp, dead)
    if not torch.isfinite(out.loss):  # before the update: the weights stay as they were
        raise TrainingDivergedError(
            f"non-finite loss at step {step} ({hook_point}); "
            f"last good checkpoint: {last_ckpt or 'none'}"
        )
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    opt.step()
    sae.set_decoder_norm_to_unit_norm()
    return out


def train_sae(
    activations: ActivationSet,
    hook_point: str,
    config: TrainingConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str | None = None,
    stop_at_step: int | None = None,
) -> TrainingResult:
    """Train one SAE on `hook_point` of `activations`.

    checkpoint_dir: where checkpoints go; a checkpoint there with the same fingerprint is
        resumed, one with another fingerprint is ignored (and replaced at the next save).
    fingerprint: identifies (inputs, config); computed from them when None.
    stop_at_step: stop (after checkpointing) once this step is reached, as if killed;
        the result then has finished=False.
    Raises TrainingDivergedError on non-finite activations or loss (naming the step; the
    last checkpoint is kept), ValueError when the activations' d_model differs from
    config.d_in or from a checkpoint's SAE.
    """
    d_model = activations.d_model(hook_point)
    if config.d_in is not None and config.d_in != d_model:
        raise ValueError(
            f"SAE d_in={config.d_in} does not match the activations' d_model={d_model} at "
            f"{hook_point} ({activations.root})"
        )
    fingerprint = fingerprint or fingerprint_of(fingerprint_inputs(activations, hook_point, config))
    device = resolve_device(config.device)
    # the held-out split applies to benchmarks only
    select = train_selection(activations, config.sources, config.split.train)
    n_by_source = tokens_by_source(activations, hook_point, select, config.exclude)
    plan = _plan(
        config,
        hook_point,
        d_model,
        device,
        sum(n_by_source.values()),
        stop_at_step,
        checkpoint_dir,
        fingerprint,
    )
    sae_cfg = _sae_config(activations, hook_point, config, d_model, select, fingerprint)
    state, last_ckpt = _start(activations, config, plan, select, sae_cfg)
    stream = batch_stream(
        activations, hook_point, config, select, state.epoch, state.batch_in_epoch
    )
    _loop(state, stream, config, plan, last_ckpt)
    return _result(state, activations, config, plan, n_by_source)


def _plan(
    config: TrainingConfig,
    hook_point: str,
    d_in: int,
    device: torch.device,
    n_train: int,
    stop_at_step: int | None,
    checkpoint_dir,
    fingerprint: str,
) -> _Plan:
    if n_train < config.batch_size:
        raise ValueError(
            f"{hook_point}: {n_train} training tokens, fewer than one batch "
            f"({config.batch_size}); lower batch_size or capture more"
        )
    if config.training_tokens is not None:
        total_steps = math.ceil(config.training_tokens / config.batch_size)
    else:
        total_steps = max(
            1, config.min_steps, math.floor(config.epochs * (n_train // config.batch_size))
        )
    return _Plan(
        hook_point=hook_point,
        d_in=d_in,
        device=device,
        n_train=n_train,
        total_steps=total_steps,
        warm_up=round(config.lr_warm_up_fraction * total_steps),
        decay=round(config.lr_decay_fraction * total_steps),
        l1_warm_up=round(config.l1_warm_up_fraction * total_steps),
        stop=total_steps if stop_at_step is None else min(total_steps, stop_at_step),
        ckpt_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        fingerprint=fingerprint,
    )


def _sae_config(
    activations: ActivationSet,
    hook_point: str,
    config: TrainingConfig,
    d_in: int,
    select,
    fingerprint: str,
) -> SAEConfig:
    """The trained SAE's cfg: shape, architecture, hook point and training provenance."""
    store = activations.for_hook(hook_point, list(select))[0]
    cls = sae_class(config.architecture)
    d_sae = config.sae_width(d_in)
    return SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture=config.architecture,
        k=config.k if "k" in cls.training_fields else None,
        model_name=store.manifest.get("model"),
        hook_name=hook_point,
        hook_layer=hook_layer(hook_point),
        context_size=store.manifest.get("context_size"),
        metadata={
            "trained_with": "sae_reasoning",
            "fingerprint": fingerprint,
            "benchmarks": activations.benchmarks,
            "sources": config.sources,
            "excluded_rows": config.exclude.describe(),
            "heldout_examples": f"example_index % {config.eval_every} == 0"
            if config.eval_every
            else None,
            **cls.training_metadata(config, d_sae),
        },
    )


def _start(activations, config, plan: _Plan, select, sae_cfg) -> tuple[TrainState, Path | None]:
    """(state, last checkpoint): resumed from a checkpoint of this fingerprint, else fresh."""
    ckpt_path = latest_checkpoint(plan.ckpt_dir)
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("fingerprint") != plan.fingerprint or ckpt.get("format") != CHECKPOINT_FORMAT:
            logger.info("ignoring checkpoint %s: it belongs to another configuration", ckpt_path)
        else:
            shape = tuple(ckpt["sae"]["W_enc"].shape)
            if shape != (plan.d_in, sae_cfg.d_sae):
                raise ValueError(
                    f"checkpoint {ckpt_path} holds an SAE of shape {shape} but the "
                    f"activations at {plan.hook_point} have d_model={plan.d_in}"
                )
            state = restore_state(ckpt, config, plan.device, sae_cfg)
            logger.info(
                "resuming %s from checkpoint %s (step %d/%d)",
                plan.hook_point,
                ckpt_path,
                state.step,
                plan.total_steps,
            )
            return state, (ckpt_path if state.step > 0 else None)
    state = init_state(
        activations, plan.hook_point, config, plan.d_in, plan.device, select, sae_cfg
    )
    return state, None


def _loop(state: TrainState, stream, config: TrainingConfig, plan: _Plan, last_ckpt) -> None:
    """The training loop: until plan.stop, one step per batch, a log row every log_every
    steps, a checkpoint every checkpoint_every steps."""
    bar = tqdm(
        total=plan.total_steps,
        initial=state.step,
        desc=f"SAE {plan.hook_point}",
        unit="step",
        disable=not config.progress,
        dynamic_ncols=True,
        leave=False,
    )
    t_segment = t_display = time.perf_counter()
    tokens_display = 0
    try:
        while state.step < plan.stop:
            epoch, index, x = next(stream)
            step = state.step + 1  # 1-based number of the step being taken
            x = _batch_on_device(x, state.scale, plan, step, last_ckpt)
            lr = config.lr * lr_factor(state.step, plan.total_steps, plan.warm_up, plan.decay)
            l1 = config.sparsity_coefficient() * (
                min(1.0, step / plan.l1_warm_up) if plan.l1_warm_up > 0 else 1.0
            )
            dead = state.tokens_since_fired >= config.dead_window_tokens
            out = train_step(
                state.sae,
                state.optimizer,
                x,
                lr,
                config.hparams(l1),
                dead,
                step,
                plan.hook_point,
                last_ckpt,
            )
            with torch.no_grad():
                state.tokens_since_fired += len(x)
                state.tokens_since_fired[out.fired] = 0
            state.step, state.epoch, state.batch_in_epoch = step, epoch, index + 1
            state.tokens_seen += len(x)
            add_tokens(len(x), "sae_training")  # the resource ledger (ledger.py)
            tokens_display += len(x)
            if step % config.log_every == 0 or step == plan.total_steps:
                row = _log_row(state, out, x, lr, l1, config)
                rate = tokens_display / max(time.perf_counter() - t_display, 1e-9)
                bar.set_postfix(
                    loss=f"{row['loss']:.3g}",
                    l0=f"{row['l0']:.0f}",
                    tok_s=f"{rate:,.0f}",
                    refresh=False,
                )
            bar.update(1)
            if plan.ckpt_dir is not None and (
                step % config.checkpoint_every == 0 or step == plan.stop
            ):
                state.elapsed_s += time.perf_counter() - t_segment
                t_segment = time.perf_counter()
                last_ckpt = save_checkpoint(
                    plan.ckpt_dir, checkpoint_state(state, plan.fingerprint)
                )
    finally:
        bar.close()
    state.elapsed_s += time.perf_counter() - t_segment


def _batch_on_device(
    x: torch.Tensor, scale: float, plan: _Plan, step: int, last_ckpt
) -> torch.Tensor:
    """The batch checked (width, finite), moved to the device and normalised."""
    if x.shape[1] != plan.d_in:
        raise ValueError(f"batch of width {x.shape[1]} at {plan.hook_point}, SAE d_in={plan.d_in}")
    x = x.to(plan.device, non_blocking=True)
    if not torch.isfinite(x).all():
        raise TrainingDivergedError(
            f"non-finite activations in the training batch at step {step} ({plan.hook_point}); "
            f"last good checkpoint: {last_ckpt or 'none'}"
        )
    return x * scale


def _log_row(
    state: TrainState,
    out: StepOutput,
    x: torch.Tensor,
    lr: float,
    l1: float,
    config: TrainingConfig,
) -> dict:
    """One history row (appended to state.history), in normalised units."""
    with torch.no_grad():
        var = (x - x.mean(0)).pow(2).sum()
        row = {
            "step": state.step,
            "tokens": state.tokens_seen,
            "loss": out.loss.item(),
            "mse": out.mse.item(),
            "l1_loss": out.sparsity_loss.item(),
            "aux_loss": out.aux_loss.item(),
            "l0": out.l0,
            "explained_variance": 1.0 - ((out.x_hat - x).pow(2).sum() / var).item(),
            "dead_fraction": (state.tokens_since_fired >= config.dead_window_tokens)
            .float()
            .mean()
            .item(),
            "lr": lr,
            "l1_coefficient": l1,
        }
    for k in HISTORY_KEYS:
        state.history[k].append(row[k])
    return row


def _result(
    state: TrainState,
    activations: ActivationSet,
    config: TrainingConfig,
    plan: _Plan,
    n_by_source: dict[str, int],
) -> TrainingResult:
    """The SAE in raw units on CPU (scale folded in; BatchTopK family calibrated) + summary."""
    finished = state.step >= plan.total_steps
    out = build_sae(state.sae.cfg.replace(device="cpu"))
    out.load_state_dict({k: v.detach().cpu() for k, v in state.sae.state_dict().items()})
    if config.normalize_activations == "expected_average_only_in":
        out.fold_activation_norm_scaling_factor(state.scale)
    calibration = {"k": out.cfg.k} if out.cfg.k is not None else {}
    if out.calibrated_threshold:
        calibration = calibrate(out, activations, plan.hook_point, config, plan.device)
    last = {k: v[-1] for k, v in state.history.items() if v}
    summary = {
        "hook_point": plan.hook_point,
        "fingerprint": plan.fingerprint,
        "finished": finished,
        "d_in": plan.d_in,
        "d_sae": out.d_sae,
        "architecture": out.cfg.architecture,
        "steps": state.step,
        "total_steps": plan.total_steps,
        "tokens_seen": state.tokens_seen,
        "n_train_tokens": plan.n_train,
        "n_train_tokens_by_source": n_by_source,
        "sources": config.sources,
        "epochs_seen": state.tokens_seen / plan.n_train,
        "train_time_s": state.elapsed_s,
        "tokens_per_s": state.tokens_seen / state.elapsed_s if state.elapsed_s > 0 else None,
        "device": str(plan.device),
        "norm_scaling_factor": state.scale,
        "history_units": "normalised inputs (x * norm_scaling_factor)",
        "final": last,
        **calibration,
        "config": config.to_dict(),
    }
    out.training_log = state.history
    out.training_summary = summary
    return TrainingResult(sae=out, history=state.history, summary=summary, finished=finished)
