"""A compact SAE trainer over an `ActivationSet` (bounded memory: batches stream from disk).

Recipe (Bricken et al. 2023 / Anthropic's April 2024 update, in SAELens's conventions):

  x      <- x * s,  s = sqrt(d_in) / E||x||   ("expected_average_only_in"; folded out at the end)
  loss   =  mean_tokens ||x - x_hat||^2  +  architecture's terms (model.py):
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
a checkpoint (model, optimizer, step, epoch position, dead-latent counters, history, RNG)
every `checkpoint_every` steps lets a killed run resume to bit-identical weights on CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from sae_reasoning.activations.store import ActivationSet, MassiveActivationFilter
from sae_reasoning.ledger import add_tokens
from sae_reasoning.sae.calibration import calibrate_topk_threshold
from sae_reasoning.sae.model import (
    SAE,
    SAEConfig,
    TrainHParams,
    build_sae,
    canonical_architecture,
    default_matryoshka_widths,
    expected_norm_scaling_factor,
)
from sae_reasoning.sae.training_data import check_sources, tokens_by_source, train_selection

# TrainingConfig fields that only some architectures read (others leave them out of the
# fingerprint, so changing k never retrains a ReLU SAE).
ARCHITECTURE_FIELDS = {
    "l1_coefficient": ("standard",),
    "l0_coefficient": ("jumprelu",),
    "jumprelu_bandwidth": ("jumprelu",),
    "jumprelu_init_threshold": ("jumprelu",),
    "k": ("topk", "batchtopk", "matryoshka_batchtopk"),
    "aux_k": ("topk", "batchtopk", "matryoshka_batchtopk"),
    "aux_k_coefficient": ("topk", "batchtopk", "matryoshka_batchtopk"),
    "topk_threshold_lr": ("batchtopk", "matryoshka_batchtopk"),
    "calibration_tokens": ("batchtopk", "matryoshka_batchtopk"),
    "matryoshka_widths": ("matryoshka_batchtopk",),
}

logger = logging.getLogger(__name__)

# Bump when a change to the trainer alters what a given config produces: finished SAEs
# with another version are retrained instead of reused.
TRAINER_VERSION = 3   # 2: architectures, sparse training step; 3: batchtopk threshold
                      # bias-corrected and calibrated to inference L0 = k
CHECKPOINT_FORMAT = 3   # 3: batchtopk state holds topk_threshold_steps
# Architectures whose shared inference threshold is calibrated after training.
CALIBRATED_ARCHITECTURES = ("batchtopk", "matryoshka_batchtopk")


class TrainingDivergedError(RuntimeError):
    """Non-finite activations or loss; the last good checkpoint is left untouched."""


@dataclass(frozen=True)
class HeldOutSplit:
    """Examples with example_index % every == 0 are held out (None: no held-out split)."""

    every: int | None = 10

    def __post_init__(self):
        if self.every is not None and int(self.every) < 2:
            raise ValueError(f"eval_every must be >= 2 or null, got {self.every}")

    def train(self, example_index: torch.Tensor) -> torch.Tensor:
        if self.every is None:
            return torch.ones_like(example_index, dtype=torch.bool)
        return example_index % int(self.every) != 0

    def heldout(self, example_index: torch.Tensor) -> torch.Tensor:
        if self.every is None:
            return torch.zeros_like(example_index, dtype=torch.bool)
        return example_index % int(self.every) == 0


@dataclass
class TrainingConfig:
    """Everything that defines a training run; keys match parameters_sae_training.yml."""

    architecture: str = "relu"
    expansion_factor: int = 8
    d_sae: int | None = None           # overrides expansion_factor when set
    d_in: int | None = None            # expected activation width; None: take the store's
    l1_coefficient: float = 1.75        # relu
    l0_coefficient: float = 1.0         # jumprelu
    jumprelu_bandwidth: float = 0.05    # jumprelu: STE kernel width (normalised units)
    jumprelu_init_threshold: float = 0.01
    k: int = 32                         # topk family: active latents per token
    aux_k: int | None = None            # AuxK: top dead latents used; None: d_in // 2
    aux_k_coefficient: float = 1 / 32   # AuxK weight (Gao et al. 2024)
    topk_threshold_lr: float = 0.01     # batchtopk: EMA rate of the inference threshold
    calibration_tokens: int = 32_768    # batchtopk: training tokens that set it to L0 = k
    matryoshka_widths: list[int] | None = None   # None: d_sae/16, /8, /4, /2, d_sae
    lr: float = 4e-3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 4096
    training_tokens: int | None = None  # token budget; None: `epochs` passes over the split
    epochs: float = 3.0
    min_steps: int = 50                 # small captures: more passes, at least this many steps
    lr_warm_up_fraction: float = 0.05
    lr_decay_fraction: float = 0.2
    l1_warm_up_fraction: float = 0.05
    normalize_activations: str = "expected_average_only_in"  # or "none"
    b_dec_init: str = "geometric_median"                     # or "mean", "zeros"
    init_sample_tokens: int = 16384
    encoder_init_scale: float = 0.1
    eval_every: int | None = 10
    # corpus and/or benchmarks (training_data.py); folders of other sources are not read
    sources: list[str] = field(default_factory=lambda: ["corpus", "benchmarks"])
    exclude_first_position: bool = True
    max_norm_ratio: float | None = 10.0
    shuffle_buffer_tokens: int = 262_144
    seed: int = 0
    # Monitoring / evaluation / operational: not fingerprinted (the trained weights do not
    # depend on them), so changing them never triggers retraining.
    dead_window_tokens: int = 100_000
    dense_threshold: float = 0.1
    device: str = "auto"
    checkpoint_every: int = 25
    log_every: int = 1
    eval_batch_size: int = 4096
    progress: bool = True
    # Above this fraction of active code entries a step uses dense matmuls (same result up
    # to float rounding). Measured on CPU: the sparse products cost ~1 us per active entry,
    # the dense ones ~0.03 us per [token, latent] entry, so sparse pays below ~3-5%.
    sparse_max_density: float = 0.05

    OPERATIONAL = ("dead_window_tokens", "dense_threshold", "device", "checkpoint_every",
                   "log_every", "eval_batch_size", "progress", "sparse_max_density")

    def __post_init__(self):
        self.architecture = str(self.architecture)
        canonical_architecture(self.architecture)
        ints = ("expansion_factor", "batch_size", "min_steps", "init_sample_tokens",
                "dead_window_tokens", "shuffle_buffer_tokens", "seed", "checkpoint_every",
                "log_every", "eval_batch_size", "k", "calibration_tokens")
        for name in ints:
            setattr(self, name, int(getattr(self, name)))
        floats = ("l1_coefficient", "lr", "epochs", "lr_warm_up_fraction", "lr_decay_fraction",
                  "l1_warm_up_fraction", "encoder_init_scale", "dense_threshold", "l0_coefficient",
                  "jumprelu_bandwidth", "jumprelu_init_threshold", "aux_k_coefficient",
                  "topk_threshold_lr", "sparse_max_density")
        for name in floats:
            setattr(self, name, float(getattr(self, name)))
        if self.matryoshka_widths is not None:
            self.matryoshka_widths = [int(w) for w in self.matryoshka_widths]
        for name in ("d_sae", "d_in", "training_tokens", "eval_every", "aux_k"):
            if getattr(self, name) is not None:
                setattr(self, name, int(getattr(self, name)))
        if self.max_norm_ratio is not None:
            self.max_norm_ratio = float(self.max_norm_ratio)
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        if self.normalize_activations not in ("expected_average_only_in", "none"):
            raise ValueError("normalize_activations must be 'expected_average_only_in' or 'none', "
                             f"got {self.normalize_activations!r}")
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise ValueError("b_dec_init must be geometric_median, mean or zeros, "
                             f"got {self.b_dec_init!r}")
        if min(self.batch_size, self.checkpoint_every, self.log_every,
               self.calibration_tokens) < 1:
            raise ValueError("batch_size, checkpoint_every, log_every and calibration_tokens "
                             "must be >= 1")
        HeldOutSplit(self.eval_every)
        self.sources = list(check_sources(self.sources))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainingConfig":
        """From the `sae_training` parameter block (nested `massive_activations` allowed)."""
        params = dict(params)
        massive = params.pop("massive_activations", None) or {}
        params.update({k: v for k, v in massive.items()})
        for key in ("hook_point_template", "spliced_eval", "planted_dictionary"):
            params.pop(key, None)  # used by the pipeline's evaluation, not the trainer
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown sae_training parameters {unknown}; known: {sorted(known)}")
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "adam_betas": list(self.adam_betas)}

    def semantic_dict(self) -> dict[str, Any]:
        """The fields that determine the trained SAE (fingerprinted): not the operational
        ones, nor those of other architectures."""
        arch = canonical_architecture(self.architecture)
        return {k: v for k, v in self.to_dict().items() if k not in self.OPERATIONAL
                and arch in ARCHITECTURE_FIELDS.get(k, (arch,))}

    @property
    def canonical_architecture(self) -> str:
        return canonical_architecture(self.architecture)

    def sparsity_coefficient(self) -> float:
        """The L1 (relu) or L0 (jumprelu) coefficient; 0 for the TopK family."""
        return {"standard": self.l1_coefficient,
                "jumprelu": self.l0_coefficient}.get(self.canonical_architecture, 0.0)

    def hparams(self, sparsity_coefficient: float) -> TrainHParams:
        return TrainHParams(
            sparsity_coefficient=sparsity_coefficient, aux_k=self.aux_k,
            aux_k_coefficient=self.aux_k_coefficient, jumprelu_bandwidth=self.jumprelu_bandwidth,
            topk_threshold_lr=self.topk_threshold_lr,
            sparse_max_density=self.sparse_max_density)

    @property
    def exclude(self) -> MassiveActivationFilter:
        return MassiveActivationFilter(self.exclude_first_position, self.max_norm_ratio)

    @property
    def split(self) -> HeldOutSplit:
        return HeldOutSplit(self.eval_every)

    def sae_width(self, d_in: int) -> int:
        return self.d_sae if self.d_sae is not None else self.expansion_factor * d_in


@dataclass
class TrainingResult:
    sae: SAE                      # raw activation units (normalisation folded in)
    history: dict[str, list]
    summary: dict[str, Any]
    finished: bool = True


# -- small pieces -------------------------------------------------------------------------

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


def count_tokens(activations: ActivationSet, hook_point: str,
                 exclude: MassiveActivationFilter | None,
                 select) -> int:
    """Rows `iter_batches` would yield with this filter and example selection (a mask
    function, or one per folder as ActivationSet.iter_batches takes it)."""
    total = 0
    names, select_of = activations.selection(select)
    for name, store in zip(names, activations.for_hook(hook_point, names)):
        pos, norm = store.column("position"), store.column("norm")
        keep = (exclude.keep_mask(pos, norm, store.median_norm) if exclude
                else torch.ones(len(norm), dtype=torch.bool))
        if select_of(name) is not None:
            keep &= select_of(name)(store.column("example_index"))
        total += int(keep.sum())
    return total


def activation_digest(activations: ActivationSet, hook_point: str) -> dict[str, Any]:
    """What identifies the activations of one hook point (from the manifests, no hashing of
    data: the manifests carry each shard's sha256)."""
    per = {}
    for bench in activations.benchmarks:
        store = activations.stores[bench].get(hook_point)
        if store is None:
            continue
        m = store.manifest
        per[bench] = {"model": m.get("model"), "d_model": m.get("d_model"), "dtype": m.get("dtype"),
                      "n_tokens": m.get("n_tokens"),
                      "shards": hashlib.sha256(
                          "".join(s.get("sha256", s["file"]) for s in m["shards"]).encode()
                      ).hexdigest()}
    return per


def fingerprint_inputs(activations: ActivationSet, hook_point: str, config: TrainingConfig) -> dict:
    return {"trainer_version": TRAINER_VERSION, "hook_point": hook_point,
            "config": config.semantic_dict(),
            "activations": activation_digest(activations, hook_point)}


def fingerprint_of(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def hook_layer(hook_point: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", hook_point)
    return int(m.group(1)) if m else None


# -- checkpoints --------------------------------------------------------------------------

def latest_checkpoint(folder: str | Path | None) -> Path | None:
    if folder is None or not Path(folder).is_dir():
        return None
    found = sorted(Path(folder).glob("step_*.pt"))
    return found[-1] if found else None


def _save_checkpoint(folder: Path, state: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{state['step']:09d}.pt"
    tmp = folder / f".{path.name}.tmp"
    torch.save(state, tmp)
    tmp.replace(path)
    for old in folder.glob("step_*.pt"):
        if old != path:
            old.unlink()
    return path


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- the loop -----------------------------------------------------------------------------

@dataclass
class _State:
    sae: SAE
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
HISTORY_KEYS = ("step", "tokens", "loss", "mse", "l1_loss", "aux_loss", "l0",
                "explained_variance", "dead_fraction", "lr", "l1_coefficient")


def _batches(activations: ActivationSet, hook_point: str, config: TrainingConfig,
             select, epoch: int, skip: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(epoch, index in epoch, batch) forever; epoch e is shuffled with seed + e."""
    while True:
        n = 0
        for i, batch in enumerate(activations.iter_batches(
                hook_point, config.batch_size, shuffle=True, seed=config.seed + epoch,
                buffer_tokens=config.shuffle_buffer_tokens, exclude=config.exclude,
                drop_last=True, select_examples=select)):
            n += 1
            if i >= skip:
                yield epoch, i, batch
        if n == 0:
            raise ValueError(
                f"no full batch of {config.batch_size} training tokens for {hook_point}")
        epoch, skip = epoch + 1, 0


def _adam(sae: SAE, config: TrainingConfig, device: torch.device) -> torch.optim.Adam:
    # The fused kernel (CPU and CUDA) is ~4x faster than the default on CPU here.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(sae.parameters(), lr=config.lr, betas=config.adam_betas, fused=fused)


def _fresh_sae(sae_cfg: SAEConfig, config: TrainingConfig) -> SAE:
    return build_sae(sae_cfg.replace(device="cpu",
                                     normalize_activations=config.normalize_activations))


def _init_state(activations, hook_point, config, d_in, device, select,
                sae_cfg: SAEConfig) -> _State:
    sample = next(iter(activations.iter_batches(
        hook_point, config.init_sample_tokens, shuffle=True, seed=config.seed + 1_000_003,
        buffer_tokens=config.shuffle_buffer_tokens, exclude=config.exclude,
        select_examples=select)))
    if not torch.isfinite(sample).all():
        raise TrainingDivergedError(
            f"non-finite activations in the initialisation sample of {hook_point} (step 0)")
    scale = 1.0
    if config.normalize_activations == "expected_average_only_in":
        scale = expected_norm_scaling_factor(float(sample.norm(dim=1).mean()), d_in)
    sample = sample * scale
    gen = torch.Generator().manual_seed(config.seed)
    sae = _fresh_sae(sae_cfg, config)
    sae.initialize_weights(gen, encoder_scale=config.encoder_init_scale)
    with torch.no_grad():
        if sae.cfg.architecture == "jumprelu":
            sae.threshold.fill_(config.jumprelu_init_threshold)
        if config.b_dec_init == "geometric_median":
            sae.b_dec.copy_(geometric_median(sample))
        elif config.b_dec_init == "mean":
            sae.b_dec.copy_(sample.mean(0))
    sae.to(device)
    return _State(sae=sae, optimizer=_adam(sae, config, device), scale=scale,
                  tokens_since_fired=torch.zeros(sae.d_sae, dtype=torch.long, device=device),
                  history={k: [] for k in HISTORY_KEYS}, generator=gen)


def _restore_state(ckpt: dict, config, device, sae_cfg: SAEConfig) -> _State:
    sae = _fresh_sae(sae_cfg, config)
    sae.load_state_dict(ckpt["sae"])
    sae.to(device)
    opt = _adam(sae, config, device)
    opt.load_state_dict(ckpt["optimizer"])
    gen = torch.Generator()
    gen.set_state(ckpt["rng"]["generator"])
    return _State(generator=gen, sae=sae, optimizer=opt, scale=float(ckpt["scale"]),
                  step=int(ckpt["step"]),
                  tokens_seen=int(ckpt["tokens_seen"]), epoch=int(ckpt["epoch"]),
                  batch_in_epoch=int(ckpt["batch_in_epoch"]), elapsed_s=float(ckpt["elapsed_s"]),
                  tokens_since_fired=ckpt["tokens_since_fired"].to(device),
                  history={k: list(v) for k, v in ckpt["history"].items()})


def _checkpoint_state(s: _State, fingerprint: str) -> dict:
    return {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "step": s.step,
            "tokens_seen": s.tokens_seen, "epoch": s.epoch, "batch_in_epoch": s.batch_in_epoch,
            "elapsed_s": s.elapsed_s, "scale": s.scale,
            "sae": {k: v.detach().cpu() for k, v in s.sae.state_dict().items()},
            "optimizer": s.optimizer.state_dict(),
            "tokens_since_fired": s.tokens_since_fired.cpu(),
            "history": s.history, "rng": {"generator": s.generator.get_state()}}


def _calibrate(sae: SAE, activations: ActivationSet, hook_point: str, config: TrainingConfig,
               device: torch.device) -> dict[str, Any]:
    """Inference threshold of a finished BatchTopK-family SAE (raw units) set to L0 = k on
    `calibration_tokens` training tokens: a fixed draw with its own seed, so straight and
    resumed runs calibrate on the same tokens."""
    batches = activations.iter_batches(
        hook_point, config.batch_size, shuffle=True, seed=config.seed + 2_000_003,
        buffer_tokens=config.shuffle_buffer_tokens, exclude=config.exclude,
        select_examples=train_selection(activations, config.sources, config.split.train))
    sae.to(device)
    result = calibrate_topk_threshold(sae, batches, config.calibration_tokens)
    sae.to("cpu")
    sae.cfg.metadata.update(inference_l0_train=result["inference_l0_train"],
                            calibration_tokens=result["calibration_tokens"])
    return result


def train_step(sae: SAE, opt: torch.optim.Optimizer, x: torch.Tensor, lr: float,
                hp: TrainHParams, dead: torch.Tensor, step: int, hook_point: str, last_ckpt):
    """One Adam step on a (normalised) batch; returns the model's StepOutput."""
    for group in opt.param_groups:
        group["lr"] = lr
    out = sae.training_loss(x, hp, dead)
    if not torch.isfinite(out.loss):   # before the update: the weights stay as they were
        raise TrainingDivergedError(f"non-finite loss at step {step} ({hook_point}); "
                                    f"last good checkpoint: {last_ckpt or 'none'}")
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
            f"{hook_point} ({activations.root})")
    d_in = d_model
    fingerprint = fingerprint or fingerprint_of(fingerprint_inputs(activations, hook_point, config))
    device = resolve_device(config.device)
    split = config.split
    select = train_selection(activations, config.sources, split.train)  # held-out split: benchmarks only
    n_by_source = tokens_by_source(activations, hook_point, select, config.exclude)
    n_train = sum(n_by_source.values())
    if n_train < config.batch_size:
        raise ValueError(f"{hook_point}: {n_train} training tokens, fewer than one batch "
                         f"({config.batch_size}); lower batch_size or capture more")
    if config.training_tokens is not None:
        total_steps = math.ceil(config.training_tokens / config.batch_size)
    else:
        total_steps = max(1, config.min_steps,
                          math.floor(config.epochs * (n_train // config.batch_size)))
    warm_up = round(config.lr_warm_up_fraction * total_steps)
    decay = round(config.lr_decay_fraction * total_steps)
    l1_warm_up = round(config.l1_warm_up_fraction * total_steps)

    store = activations.for_hook(hook_point, list(select))[0]
    arch = config.canonical_architecture
    d_sae = config.sae_width(d_in)
    extra = {}
    if arch == "matryoshka_batchtopk":
        extra["matryoshka_widths"] = config.matryoshka_widths or default_matryoshka_widths(d_sae)
    sae_cfg = SAEConfig(
        d_in=d_in, d_sae=d_sae, architecture=config.architecture,
        k=config.k if arch in ("topk", "batchtopk", "matryoshka_batchtopk") else None,
        model_name=store.manifest.get("model"), hook_name=hook_point,
        hook_layer=hook_layer(hook_point), context_size=store.manifest.get("context_size"),
        metadata={"trained_with": "sae_reasoning", "fingerprint": fingerprint,
                  "benchmarks": activations.benchmarks, "sources": config.sources,
                  "excluded_rows": config.exclude.describe(),
                  "heldout_examples": f"example_index % {config.eval_every} == 0"
                  if config.eval_every else None, **extra})

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    ckpt_path = latest_checkpoint(ckpt_dir)
    state = None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("fingerprint") != fingerprint or ckpt.get("format") != CHECKPOINT_FORMAT:
            logger.info("ignoring checkpoint %s: it belongs to another configuration", ckpt_path)
        else:
            shape = tuple(ckpt["sae"]["W_enc"].shape)
            if shape != (d_in, sae_cfg.d_sae):
                raise ValueError(f"checkpoint {ckpt_path} holds an SAE of shape {shape} but the "
                                 f"activations at {hook_point} have d_model={d_in}")
            state = _restore_state(ckpt, config, device, sae_cfg)
            logger.info("resuming %s from checkpoint %s (step %d/%d)", hook_point, ckpt_path,
                        state.step, total_steps)
    if state is None:
        state = _init_state(activations, hook_point, config, d_in, device, select, sae_cfg)

    sae, opt = state.sae, state.optimizer
    stream = _batches(activations, hook_point, config, select, state.epoch,
                      state.batch_in_epoch)
    bar = tqdm(total=total_steps, initial=state.step, desc=f"SAE {hook_point}", unit="step",
               disable=not config.progress, dynamic_ncols=True, leave=False)
    last_ckpt = ckpt_path if state.step > 0 else None
    t_segment = t_display = time.perf_counter()
    tokens_display = 0
    stop = total_steps if stop_at_step is None else min(total_steps, stop_at_step)
    try:
        while state.step < stop:
            epoch, index, x = next(stream)
            step = state.step + 1  # 1-based number of the step being taken
            if x.shape[1] != d_in:
                raise ValueError(f"batch of width {x.shape[1]} at {hook_point}, SAE d_in={d_in}")
            x = x.to(device, non_blocking=True)
            if not torch.isfinite(x).all():
                raise TrainingDivergedError(
                    f"non-finite activations in the training batch at step {step} ({hook_point}); "
                    f"last good checkpoint: {last_ckpt or 'none'}")
            x = x * state.scale
            lr = config.lr * lr_factor(state.step, total_steps, warm_up, decay)
            l1 = config.sparsity_coefficient() * (min(1.0, step / l1_warm_up)
                                                  if l1_warm_up > 0 else 1.0)
            dead = state.tokens_since_fired >= config.dead_window_tokens
            out = train_step(sae, opt, x, lr, config.hparams(l1), dead, step, hook_point,
                              last_ckpt)
            x_hat = out.x_hat

            with torch.no_grad():
                state.tokens_since_fired += len(x)
                state.tokens_since_fired[out.fired] = 0
            state.step, state.epoch, state.batch_in_epoch = step, epoch, index + 1
            state.tokens_seen += len(x)
            add_tokens(len(x), "sae_training")  # the resource ledger (ledger.py)
            tokens_display += len(x)

            if step % config.log_every == 0 or step == total_steps:
                with torch.no_grad():
                    var = (x - x.mean(0)).pow(2).sum()
                    row = {"step": step, "tokens": state.tokens_seen, "loss": out.loss.item(),
                           "mse": out.mse.item(), "l1_loss": out.sparsity_loss.item(),
                           "aux_loss": out.aux_loss.item(), "l0": out.l0,
                           "explained_variance": 1.0 - ((x_hat - x).pow(2).sum() / var).item(),
                           "dead_fraction": (state.tokens_since_fired >= config.dead_window_tokens)
                           .float().mean().item(),
                           "lr": lr, "l1_coefficient": l1}
                for k in HISTORY_KEYS:
                    state.history[k].append(row[k])
                rate = tokens_display / max(time.perf_counter() - t_display, 1e-9)
                bar.set_postfix(loss=f"{row['loss']:.3g}", l0=f"{row['l0']:.0f}",
                                tok_s=f"{rate:,.0f}", refresh=False)
            bar.update(1)

            if ckpt_dir is not None and (step % config.checkpoint_every == 0 or step == stop):
                state.elapsed_s += time.perf_counter() - t_segment
                t_segment = time.perf_counter()
                last_ckpt = _save_checkpoint(ckpt_dir, _checkpoint_state(state, fingerprint))
    finally:
        bar.close()
    state.elapsed_s += time.perf_counter() - t_segment

    finished = state.step >= total_steps
    out = build_sae(sae.cfg.replace(device="cpu"))
    out.load_state_dict({k: v.detach().cpu() for k, v in sae.state_dict().items()})
    if config.normalize_activations == "expected_average_only_in":
        out.fold_activation_norm_scaling_factor(state.scale)
    calibration = {"k": out.cfg.k} if out.cfg.k is not None else {}
    if arch in CALIBRATED_ARCHITECTURES:
        calibration = _calibrate(out, activations, hook_point, config, device)
    last = {k: v[-1] for k, v in state.history.items() if v}
    summary = {
        "hook_point": hook_point, "fingerprint": fingerprint, "finished": finished,
        "d_in": d_in, "d_sae": out.d_sae, "architecture": out.cfg.architecture,
        "steps": state.step, "total_steps": total_steps, "tokens_seen": state.tokens_seen,
        "n_train_tokens": n_train, "n_train_tokens_by_source": n_by_source,
        "sources": config.sources, "epochs_seen": state.tokens_seen / n_train,
        "train_time_s": state.elapsed_s,
        "tokens_per_s": state.tokens_seen / state.elapsed_s if state.elapsed_s > 0 else None,
        "device": str(device), "norm_scaling_factor": state.scale,
        "history_units": "normalised inputs (x * norm_scaling_factor)",
        "final": last, **calibration, "config": config.to_dict(),
    }
    out.training_log = state.history
    out.training_summary = summary
    return TrainingResult(sae=out, history=state.history, summary=summary, finished=finished)
