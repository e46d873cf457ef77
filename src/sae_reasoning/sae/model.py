"""The SAE base every architecture shares, parameterised exactly as SAELens does.

    f     = relu((x - b_dec) @ W_enc + b_enc)        encode  (apply_b_dec_to_input)
    x_hat = f @ W_dec + b_dec                        decode

W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]: the SAELens names
and shapes, so a state dict moves between this module and SAELens unchanged.

`encode`/`decode` always work in the model's raw activation units. Training may rescale
inputs (SAELens's `expected_average_only_in`); the trainer folds that scale into the
weights before an SAE leaves it (`fold_activation_norm_scaling_factor`) and records it in
`cfg.metadata["norm_scaling_factor"]`.

The architectures (their activation function and training loss) are the modules of
`architectures/`; `architectures.build_sae` picks one by `cfg.architecture`. The cfg.json
layout is saelens_format.py's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}

# Our names for an architecture -> its SAELens name (the key of architectures.SAE_CLASSES).
ARCHITECTURE_ALIASES = {
    "relu": "standard",
    "standard": "standard",
    "topk": "topk",
    "batchtopk": "batchtopk",
    "jumprelu": "jumprelu",
    "matryoshka_batchtopk": "matryoshka_batchtopk",
}
# Architectures whose config needs k (active latents per token).
K_ARCHITECTURES = ("topk", "batchtopk", "matryoshka_batchtopk")


def canonical_architecture(name: str) -> str:
    """SAELens architecture name for `name` ('relu' -> 'standard'); ValueError if unknown."""
    key = str(name).lower()
    if key not in ARCHITECTURE_ALIASES:
        raise ValueError(
            f"unknown SAE architecture {name!r}; implemented: {sorted(ARCHITECTURE_ALIASES)}"
        )
    return ARCHITECTURE_ALIASES[key]


def dtype_name(dtype: str | torch.dtype) -> str:
    """'float32' for torch.float32, 'torch.float32' or 'float32'."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"unsupported SAE dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return name


@dataclass
class SAEConfig:
    """SAELens field names. On disk (cfg.json, SAELens 6 layout: saelens_format.py) the
    model/hook fields live under `metadata`; here they are plain attributes. `metadata`
    holds everything else (our extras: norm_scaling_factor, training provenance, ...)."""

    d_in: int
    d_sae: int
    architecture: str = "standard"
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    k: int | None = None  # topk / batchtopk: active latents per token
    rescale_acts_by_decoder_norm: bool = False  # SAELens topk field (folded in when loading)
    # SAELens metadata fields
    model_name: str | None = None
    hook_name: str | None = None
    hook_layer: int | None = None
    hook_head_index: int | None = None
    context_size: int | None = None
    prepend_bos: bool | None = None
    dataset_path: str | None = None
    model_class_name: str | None = None
    neuronpedia_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.d_in, self.d_sae = int(self.d_in), int(self.d_sae)
        self.architecture = canonical_architecture(self.architecture)
        self.dtype = dtype_name(self.dtype)
        if self.k is not None:
            self.k = int(self.k)
        if self.architecture in K_ARCHITECTURES and not self.k:
            raise ValueError(
                f"architecture {self.architecture!r} needs k (active latents per token)"
            )

    @property
    def norm_scaling_factor(self) -> float | None:
        """Scale the SAE was trained at (x * s), already folded into the weights."""
        return self.metadata.get("norm_scaling_factor")

    def replace(self, **changes) -> SAEConfig:
        d = asdict(self)
        d.update(changes)
        return SAEConfig(**d)


class SAE(nn.Module):
    """Base class: the four SAELens parameters, `decode`, and the decoder-norm utilities.
    Subclasses define `encode_with_hidden_pre` (the activation function)."""

    architecture: ClassVar[str]

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        dev, dt = torch.device(cfg.device), DTYPES[cfg.dtype]
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, device=dev, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, device=dev, dtype=dt))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, device=dev, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, device=dev, dtype=dt))
        # Filled by the trainer / the Kedro dataset; None for SAEs from elsewhere.
        self.training_log: dict[str, list] | None = None
        self.training_summary: dict[str, Any] | None = None

    # -- shapes -----------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    # -- forward ----------------------------------------------------------------------
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations f [..., d_sae] for inputs x [..., d_in] (raw units)."""
        return self.encode_with_hidden_pre(x)[0]

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction [..., d_in] from latents f [..., d_sae]."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"input has d_model={x.shape[-1]} but this SAE ({self.cfg.hook_name or 'unnamed'}) "
                f"has d_in={self.cfg.d_in}"
            )
        return x.to(self.dtype)

    def _sae_in(self, x: torch.Tensor) -> torch.Tensor:
        x = self._checked(x)
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    # -- training utilities -------------------------------------------------------------
    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        self.W_dec.data.div_(
            torch.linalg.vector_norm(self.W_dec.data, dim=1, keepdim=True).clamp_min_(1e-8)
        )

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out of W_dec.grad the part along each (unit) decoder row, so an Adam step
        moves directions, not lengths (Bricken et al. 2023)."""
        if self.W_dec.grad is None:
            return
        w = self.W_dec.data
        norm2 = torch.linalg.vecdot(w, w).clamp_min_(1e-16)
        parallel = torch.linalg.vecdot(self.W_dec.grad, w) / norm2
        self.W_dec.grad.addcmul_(parallel[:, None], w, value=-1.0)

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Turn an SAE trained on x * s into one that takes raw x (as SAELens does)."""
        self.W_enc.data *= scaling_factor
        self.W_dec.data /= scaling_factor
        self.b_dec.data /= scaling_factor
        self.cfg.normalize_activations = "none"
        self.cfg.metadata["norm_scaling_factor"] = float(scaling_factor)

    @torch.no_grad()
    def initialize_weights(
        self, generator: torch.Generator | None = None, encoder_scale: float = 0.1
    ) -> None:
        """Unit-norm random decoder rows, W_enc = encoder_scale * W_dec.T, zero biases."""
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator, dtype=torch.float32)
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec.data.copy_(w)
        self.W_enc.data.copy_(w.T * encoder_scale)
        self.b_enc.data.zero_()
        self.b_dec.data.zero_()

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        self.cfg.device = str(self.W_enc.device)
        self.cfg.dtype = dtype_name(self.W_enc.dtype)
        return out

    # -- inference form --------------------------------------------------------------------
    def inference_form(self) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
        """(SAELens architecture, CPU state dict, extra cfg metadata) of this SAE as SAELens
        runs it for inference; saelens_format.save_sae writes it."""
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        return self.cfg.architecture, state, {}

    def extra_repr(self) -> str:
        return (
            f"architecture={self.cfg.architecture}, d_in={self.cfg.d_in}, "
            f"d_sae={self.cfg.d_sae}, hook_name={self.cfg.hook_name}"
        )
