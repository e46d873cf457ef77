"""What a training run takes and gives: TrainingConfig (parameters_sae_training.yml),
the held-out split, TrainingResult and the error a diverging run raises."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from sae_reasoning.activations.store import MassiveActivationFilter
from sae_reasoning.sae.architectures import ARCHITECTURE_SPECIFIC_FIELDS, TrainHParams, sae_class
from sae_reasoning.sae.model import SAE, canonical_architecture
from sae_reasoning.sae.training_data import check_sources


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
    d_sae: int | None = None  # overrides expansion_factor when set
    d_in: int | None = None  # expected activation width; None: take the store's
    l1_coefficient: float = 1.75  # relu
    l0_coefficient: float = 1.0  # jumprelu
    jumprelu_bandwidth: float = 0.05  # jumprelu: STE kernel width (normalised units)
    jumprelu_init_threshold: float = 0.01
    k: int = 32  # topk family: active latents per token
    aux_k: int | None = None  # AuxK: top dead latents used; None: d_in // 2
    aux_k_coefficient: float = 1 / 32  # AuxK weight (Gao et al. 2024)
    topk_threshold_lr: float = 0.01  # batchtopk: EMA rate of the inference threshold
    calibration_tokens: int = 32_768  # batchtopk: training tokens that set it to L0 = k
    matryoshka_widths: list[int] | None = None  # None: d_sae/16, /8, /4, /2, d_sae
    lr: float = 4e-3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 4096
    training_tokens: int | None = None  # token budget; None: `epochs` passes over the split
    epochs: float = 3.0
    min_steps: int = 50  # small captures: more passes, at least this many steps
    lr_warm_up_fraction: float = 0.05
    lr_decay_fraction: float = 0.2
    l1_warm_up_fraction: float = 0.05
    normalize_activations: str = "expected_average_only_in"  # or "none"
    b_dec_init: str = "geometric_median"  # or "mean", "zeros"
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

    OPERATIONAL = (
        "dead_window_tokens",
        "dense_threshold",
        "device",
        "checkpoint_every",
        "log_every",
        "eval_batch_size",
        "progress",
        "sparse_max_density",
    )

    def __post_init__(self):
        self.architecture = str(self.architecture)
        canonical_architecture(self.architecture)
        ints = (
            "expansion_factor",
            "batch_size",
            "min_steps",
            "init_sample_tokens",
            "dead_window_tokens",
            "shuffle_buffer_tokens",
            "seed",
            "checkpoint_every",
            "log_every",
            "eval_batch_size",
            "k",
            "calibration_tokens",
        )
        for name in ints:
            setattr(self, name, int(getattr(self, name)))
        floats = (
            "l1_coefficient",
            "lr",
            "epochs",
            "lr_warm_up_fraction",
            "lr_decay_fraction",
            "l1_warm_up_fraction",
            "encoder_init_scale",
            "dense_threshold",
            "l0_coefficient",
            "jumprelu_bandwidth",
            "jumprelu_init_threshold",
            "aux_k_coefficient",
            "topk_threshold_lr",
            "sparse_max_density",
        )
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
            raise ValueError(
                "normalize_activations must be 'expected_average_only_in' or 'none', "
                f"got {self.normalize_activations!r}"
            )
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise ValueError(
                f"b_dec_init must be geometric_median, mean or zeros, got {self.b_dec_init!r}"
            )
        if min(self.batch_size, self.checkpoint_every, self.log_every, self.calibration_tokens) < 1:
            raise ValueError(
                "batch_size, checkpoint_every, log_every and calibration_tokens must be >= 1"
            )
        HeldOutSplit(self.eval_every)
        self.sources = list(check_sources(self.sources))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainingConfig:
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
        ones, nor those only other architectures read (architectures/*.training_fields)."""
        own = sae_class(self.architecture).training_fields
        return {
            k: v
            for k, v in self.to_dict().items()
            if k not in self.OPERATIONAL and (k in own or k not in ARCHITECTURE_SPECIFIC_FIELDS)
        }

    @property
    def canonical_architecture(self) -> str:
        return canonical_architecture(self.architecture)

    def sparsity_coefficient(self) -> float:
        """The L1 (relu) or L0 (jumprelu) coefficient; 0 for the TopK family."""
        name = sae_class(self.architecture).sparsity_coefficient_field
        return getattr(self, name) if name else 0.0

    def hparams(self, sparsity_coefficient: float) -> TrainHParams:
        return TrainHParams(
            sparsity_coefficient=sparsity_coefficient,
            aux_k=self.aux_k,
            aux_k_coefficient=self.aux_k_coefficient,
            jumprelu_bandwidth=self.jumprelu_bandwidth,
            topk_threshold_lr=self.topk_threshold_lr,
            sparse_max_density=self.sparse_max_density,
        )

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
    sae: SAE  # raw activation units (normalisation folded in)
    history: dict[str, list]
    summary: dict[str, Any]
    finished: bool = True
