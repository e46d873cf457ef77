"""Sparse autoencoder modules, parameterised exactly as SAELens does.

    f     = relu((x - b_dec) @ W_enc + b_enc)        encode  (apply_b_dec_to_input)
    x_hat = f @ W_dec + b_dec                        decode

W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]: the SAELens names
and shapes, so a state dict moves between this module and SAELens unchanged.

`encode`/`decode` always work in the model's raw activation units. Training may rescale
inputs (SAELens's `expected_average_only_in`); the trainer folds that scale into the
weights before an SAE leaves it (`fold_activation_norm_scaling_factor`) and records it in
`cfg.metadata["norm_scaling_factor"]`.

Architectures, registered by their SAELens name (`architecture` parameter in brackets):

  standard  (relu)       f = relu(pre), + l1 * sum_i f_i ||W_dec[i]||         Bricken et al. 2023
  topk      (topk)       f = relu(TopK_k(pre)) per token, + AuxK loss         Gao et al. 2024
  batchtopk (batchtopk)  top k * batch entries of relu(pre) over the batch;   Bussmann et al. 2024
                         inference: f = pre * H(pre - theta), one theta set
                         after training so that L0 = k (calibration.py);
                         saved as jumprelu
  jumprelu  (jumprelu)   f = pre * H(pre - theta_i), + l0 * sum_i H(..)       Rajamanoharan 2024
                         (straight-through estimator, rectangle kernel of
                         width `bandwidth` for d/dtheta)
  matryoshka_batchtopk   BatchTopK with the reconstruction loss summed over   Bussmann et al. 2025
                         nested prefixes of the latents (matryoshka_widths);
                         saved as jumprelu

with pre = (x - b_dec) @ W_enc + b_enc. `training_loss` computes a training step's loss
on the active entries only (sparse_ops.py); `sparse=False` gives the same loss and
gradients through dense matmuls (the reference the fast path is tested against).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from sae_reasoning.sae import sparse_ops
from sae_reasoning.sae.sparse_ops import Codes

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}

# Our names for an architecture -> the SAELens name written to cfg.json.
ARCHITECTURE_ALIASES = {
    "relu": "standard", "standard": "standard", "topk": "topk", "batchtopk": "batchtopk",
    "jumprelu": "jumprelu", "matryoshka_batchtopk": "matryoshka_batchtopk",
}
# Architectures SAELens stores under their own name; the others are written as jumprelu.
SAELENS_ARCHITECTURES = ("standard", "topk", "jumprelu")

# cfg.json `metadata` keys that SAELens itself defines (SAEMetadata / LLM_METADATA_KEYS).
_METADATA_FIELDS = ("model_name", "hook_name", "hook_layer", "hook_head_index", "context_size",
                    "prepend_bos", "dataset_path", "model_class_name", "neuronpedia_id")


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
    """SAELens field names. On disk (cfg.json, SAELens 6 layout) the model/hook fields live
    under `metadata`; here they are plain attributes. `metadata` holds everything else
    (our extras: norm_scaling_factor, training provenance, ...)."""

    d_in: int
    d_sae: int
    architecture: str = "standard"
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    k: int | None = None                        # topk / batchtopk: active latents per token
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
        if self.architecture in ("topk", "batchtopk", "matryoshka_batchtopk") and not self.k:
            raise ValueError(f"architecture {self.architecture!r} needs k "
                             "(active latents per token)")

    @property
    def norm_scaling_factor(self) -> float | None:
        """Scale the SAE was trained at (x * s), already folded into the weights."""
        return self.metadata.get("norm_scaling_factor")

    def to_dict(self) -> dict[str, Any]:
        """cfg.json content in the layout SAELens 6 writes (`SAEConfig.to_dict`)."""
        meta = {k: getattr(self, k) for k in _METADATA_FIELDS if getattr(self, k) is not None}
        meta.update(self.metadata)
        # SAELens reads configs without a >= 6 version as pre-6.0 and re-parses them; this
        # value names the on-disk format version we write, not an installed SAELens.
        meta.setdefault("sae_lens_version", "6.0.0")
        meta.setdefault("sae_lens_training_version", None)
        out = {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": self.dtype,
            "device": self.device,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": self.reshape_activations,
            "metadata": meta,
            "architecture": self.architecture,
        }
        if self.architecture == "topk":   # SAELens TopKSAEConfig fields
            out.update(k=self.k, rescale_acts_by_decoder_norm=self.rescale_acts_by_decoder_norm)
        elif self.architecture in ("batchtopk", "matryoshka_batchtopk"):
            out["k"] = self.k
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        """Inverse of `to_dict` (SAELens 6 layout: model/hook fields under `metadata`)."""
        names = {f.name for f in fields(cls)} - {"metadata"}
        meta = dict(d.get("metadata") or {})
        kwargs = {k: v for k, v in d.items() if k in names}
        for k in _METADATA_FIELDS:
            if k in meta:
                kwargs[k] = meta.pop(k)
        return cls(**kwargs, metadata=meta)

    def replace(self, **changes) -> "SAEConfig":
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
        self.W_dec.data.div_(torch.linalg.vector_norm(self.W_dec.data, dim=1, keepdim=True)
                             .clamp_min_(1e-8))

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
    def initialize_weights(self, generator: torch.Generator | None = None,
                           encoder_scale: float = 0.1) -> None:
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

    # -- persistence ---------------------------------------------------------------------
    def saelens_export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(state dict, cfg.json dict) as SAELens stores this SAE for inference."""
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        return state, self.cfg.to_dict()

    def save(self, folder) -> None:
        """Write cfg.json + sae_weights.safetensors (SAELens layout) into `folder`."""
        from sae_reasoning.sae.saelens_format import save_sae

        save_sae(self, folder)

    @classmethod
    def load(cls, folder, device: str | torch.device = "cpu", dtype: str | None = None) -> "SAE":
        """Load an SAE folder in the SAELens layout (ours or one SAELens wrote)."""
        from sae_reasoning.sae.saelens_format import load_sae

        return load_sae(folder, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return (f"architecture={self.cfg.architecture}, d_in={self.cfg.d_in}, "
                f"d_sae={self.cfg.d_sae}, hook_name={self.cfg.hook_name}")


@dataclass
class TrainHParams:
    """What a training step needs besides the batch (from TrainingConfig, with schedules
    applied by the trainer)."""

    sparsity_coefficient: float = 0.0   # relu: L1 coefficient; jumprelu: L0 coefficient
    aux_k: int | None = None            # AuxK: dead latents used (None: d_in // 2, Gao et al.)
    aux_k_coefficient: float = 1 / 32   # AuxK loss weight (Gao et al.: 1/32)
    jumprelu_bandwidth: float = 0.05    # width of the rectangle kernel of the STE
    topk_threshold_lr: float = 0.01     # batchtopk: EMA rate of the inference threshold
    sparse: bool | None = None          # None: sparse products when codes are sparse enough
    sparse_max_density: float = 0.05    # above this fraction of active entries, dense matmuls


@dataclass
class StepOutput:
    loss: torch.Tensor            # what backward() is called on
    mse: torch.Tensor             # mean_tokens ||x - x_hat||^2 (full width)
    sparsity_loss: torch.Tensor   # coefficient * L1 (relu) or L0 (jumprelu); 0 for TopK family
    aux_loss: torch.Tensor        # AuxK (TopK family) and Matryoshka inner losses
    x_hat: torch.Tensor           # detached reconstruction
    l0: float                     # mean active latents per token
    fired: torch.Tensor           # [d_sae] bool: latents active on some token of the batch
    sparse: bool                  # whether the sparse products were used


class _JumpReLUSTE(torch.autograd.Function):
    """v * H(v - t); d/dv = H(v - t), d/dt = -(t / eps) * rect((v - t) / eps)."""

    @staticmethod
    def forward(ctx, v, t, eps):
        ctx.save_for_backward(v, t)
        ctx.eps = eps
        return v * (v > t)

    @staticmethod
    def backward(ctx, g):
        v, t = ctx.saved_tensors
        eps = ctx.eps
        rect = ((v - t).abs() < eps / 2).to(g)
        return (v > t).to(g) * g, -(t / eps) * rect * g, None


class _StepSTE(torch.autograd.Function):
    """H(v - t); d/dv = 0, d/dt = -(1 / eps) * rect((v - t) / eps) (Rajamanoharan et al.)."""

    @staticmethod
    def forward(ctx, v, t, eps):
        ctx.save_for_backward(v, t)
        ctx.eps = eps
        return (v > t).to(v)

    @staticmethod
    def backward(ctx, g):
        v, t = ctx.saved_tensors
        eps = ctx.eps
        rect = ((v - t).abs() < eps / 2).to(g)
        return torch.zeros_like(v), -(1.0 / eps) * rect * g, None


class _TrainingMixin:
    """The training step shared by every architecture. Subclasses say which entries of
    pre = x @ W_enc + c can be non-zero (`select_mask` for elementwise rules, else
    `select`), the activation on them (`activate`) and their penalty. `activate` and
    `penalty` get v: pre at the entries (cols: their latents) or, in the dense regime, the
    whole [n, d_sae] matrix (cols None)."""

    def select_mask(self, pre: torch.Tensor, hp: TrainHParams) -> torch.Tensor | None:
        return None

    def select(self, pre: torch.Tensor, hp: TrainHParams) -> Codes:
        return Codes.from_mask(self.select_mask(pre, hp))

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A [batch, d_sae]-sized buffer reused across steps: a fresh 75 MB tensor per step
        costs ~0.1 s of page faults on CPU (first touch), as much as the work done in it."""
        cache = self.__dict__.setdefault("_scratch_buffers", {})
        buf = cache.get(name)
        if (buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype
                or buf.device != self.W_enc.device):
            buf = cache[name] = torch.empty(shape, dtype=dtype, device=self.W_enc.device)
        return buf

    def _mask(self, pre: torch.Tensor, threshold) -> torch.Tensor:
        return torch.gt(pre, threshold, out=self._scratch("mask", tuple(pre.shape), torch.bool))

    def activate(self, v: torch.Tensor, cols, hp: TrainHParams) -> torch.Tensor:
        return torch.relu(v)

    def penalty(self, v, vals, cols, n_rows: int, hp) -> torch.Tensor:
        return vals.new_zeros(())

    def uses_aux_k(self) -> bool:
        return False

    def after_step(self, vals: torch.Tensor, hp: TrainHParams) -> None:
        pass

    def reconstruction_loss(self, x, vals, codes, decode) -> tuple[torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
        """(mse, extra loss, x_hat)."""
        x_hat = decode(vals, codes) + self.b_dec
        mse = (x_hat - x).pow(2).sum(-1).mean()
        return mse, mse.new_zeros(()), x_hat

    def training_loss(self, x: torch.Tensor, hp: TrainHParams,
                      dead_mask: torch.Tensor | None = None) -> StepOutput:
        """Loss of one training step on a (normalised) batch x [n, d_in]."""
        x = self._checked(x)
        n = x.shape[0]
        c = self.b_enc - self.b_dec @ self.W_enc if self.cfg.apply_b_dec_to_input else self.b_enc
        with torch.no_grad():   # (x - b_dec) @ W_enc + b_enc, written so b_dec costs a GEMV
            pre = torch.addmm(c.detach(), x, self.W_enc.detach(),
                              out=self._scratch("pre", (n, self.d_sae), x.dtype))
        mask = self.select_mask(pre, hp)       # ReLU / JumpReLU: elementwise selection
        sparse = hp.sparse
        if sparse is None:
            nnz = int(mask.sum()) if mask is not None else n * self.cfg.k
            sparse = nnz <= hp.sparse_max_density * n * self.d_sae
        if mask is not None and not sparse:    # dense codes: plain matmuls on [n, d_sae]
            v = _DenseEncodeAll.apply(x, self.W_enc, c, pre)
            vals = self.activate(v, None, hp)
            x_hat = vals @ self.W_dec + self.b_dec
            mse, aux = (x_hat - x).pow(2).sum(-1).mean(), x.new_zeros(())
            penalty = self.penalty(v, vals, None, n, hp)
            cols = None
        else:
            codes = Codes.from_mask(mask) if mask is not None else self.select(pre, hp)
            enc = sparse_ops.encode_at if sparse else _dense_encode_at
            W_dec = self.W_dec

            def decode(values, cs):
                if sparse:
                    return sparse_ops.decode(values, W_dec, cs)
                return cs.to_dense(values) @ W_dec

            v = enc(x, self.W_enc, c, pre, codes)
            vals = self.activate(v, codes.cols, hp)
            mse, aux, x_hat = self.reconstruction_loss(x, vals, codes, decode)
            penalty = self.penalty(v, vals, codes.cols, n, hp)
            cols = codes.cols
        if self.uses_aux_k() and dead_mask is not None and bool(dead_mask.any()):
            aux = aux + self._aux_k_loss(x, x_hat, pre, c, dead_mask, hp)
        with torch.no_grad():
            active = vals > 0
            if cols is None:
                fired = active.any(0)
            else:
                fired = torch.bincount(cols[active], minlength=self.d_sae) > 0
            l0 = float(active.sum()) / n
            self.after_step(vals.detach(), hp)
        return StepOutput(loss=mse + penalty + aux, mse=mse, sparsity_loss=penalty, aux_loss=aux,
                          x_hat=x_hat.detach(), l0=l0, fired=fired, sparse=sparse)

    def _aux_k_loss(self, x, x_hat, pre, c, dead_mask, hp) -> torch.Tensor:
        """Gao et al. 2024: the top k_aux dead latents reconstruct the residual x - x_hat.

        Dense on the dead latents' columns: with k_aux = d_in / 2 of them per token the
        codes are too dense (~10%) for the sparse products to pay."""
        dead = dead_mask.nonzero().squeeze(1)
        k_aux = hp.aux_k or self.d_in // 2
        scale = min(len(dead) / k_aux, 1.0)   # as SAELens: less weight when few are dead
        k_aux = min(k_aux, len(dead))
        with torch.no_grad():
            pre_dead = torch.index_select(pre, 1, dead, out=self._scratch(
                "pre_dead", (pre.shape[0], len(dead)), pre.dtype))
            top = pre_dead.topk(k_aux, dim=1, sorted=False)
        v = _RowTopKEncode.apply(x, self.W_enc[:, dead], c[dead], top.values, top.indices)
        f = torch.zeros_like(pre_dead).scatter(1, top.indices, torch.relu(v))
        e_hat = f @ self.W_dec[dead]
        residual = (x - x_hat).detach()
        return hp.aux_k_coefficient * scale * (e_hat - residual).pow(2).sum(-1).mean()


class _RowTopKEncode(torch.autograd.Function):
    """values [n, k] of x @ W + c at columns idx [n, k] (given, computed without grad);
    gradients for W and c by one dense matmul."""

    @staticmethod
    def forward(ctx, x, W, c, values, idx):
        ctx.save_for_backward(x, idx)
        ctx.width = W.shape[1]
        return values.clone()

    @staticmethod
    def backward(ctx, g):
        x, idx = ctx.saved_tensors
        G = g.new_zeros(x.shape[0], ctx.width).scatter_(1, idx, g)
        return None, x.T @ G, G.sum(0), None, None


class _DenseEncodeAt(torch.autograd.Function):
    """Reference for sparse_ops.encode_at: the same values, gradients by dense matmuls."""

    @staticmethod
    def forward(ctx, x, W_enc, c, pre, codes):
        ctx.save_for_backward(x)
        ctx.codes = codes
        return codes.gather(pre)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        G = ctx.codes.to_dense(g)
        return None, x.T @ G, G.sum(0), None, None


class _DenseEncodeAll(torch.autograd.Function):
    """x @ W_enc + c given its value `pre` (computed without grad): the forward is free."""

    @staticmethod
    def forward(ctx, x, W_enc, c, pre):
        ctx.save_for_backward(x)
        return pre.clone()

    @staticmethod
    def backward(ctx, G):
        (x,) = ctx.saved_tensors
        return None, x.T @ G, G.sum(0), None


def _dense_encode_at(x, W_enc, c, pre, codes):
    return _DenseEncodeAt.apply(x, W_enc, c, pre, codes)


class StandardSAE(_TrainingMixin, SAE):
    """ReLU SAE ("standard" in SAELens; Bricken et al. 2023)."""

    architecture = "standard"

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_pre = self._sae_in(x) @ self.W_enc + self.b_enc
        return torch.relu(hidden_pre), hidden_pre

    def select_mask(self, pre, hp):
        return self._mask(pre, 0.0)

    def penalty(self, v, vals, cols, n_rows, hp):
        # L1 weighted by decoder norms; the trainer keeps them at 1, so it is the plain sum.
        return hp.sparsity_coefficient * vals.sum() / n_rows


class TopKSAE(_TrainingMixin, SAE):
    """TopK SAE (Gao et al. 2024): the k largest pre-activations per token, ReLU'd."""

    architecture = "topk"

    def encode_with_hidden_pre(self, x):
        hidden_pre = self._sae_in(x) @ self.W_enc + self.b_enc
        top = hidden_pre.topk(self.cfg.k, dim=-1, sorted=False)
        f = torch.zeros_like(hidden_pre).scatter_(-1, top.indices, torch.relu(top.values))
        return f, hidden_pre

    def select(self, pre, hp):
        top = pre.topk(self.cfg.k, dim=1, sorted=False)
        return Codes.from_topk(top.indices, self.d_sae, top.values)

    def uses_aux_k(self):
        return True


class JumpReLUSAE(_TrainingMixin, SAE):
    """JumpReLU SAE (Rajamanoharan et al. 2024): f_i = pre_i * H(pre_i - threshold_i)."""

    architecture = "jumprelu"

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, device=torch.device(cfg.device),
                                                  dtype=DTYPES[cfg.dtype]))

    def encode_with_hidden_pre(self, x):
        hidden_pre = self._sae_in(x) @ self.W_enc + self.b_enc
        return torch.relu(hidden_pre) * (hidden_pre > self.threshold), hidden_pre

    def select_mask(self, pre, hp):
        with torch.no_grad():   # a negative threshold would let negative pre-activations through
            self.threshold.clamp_(min=0.0)
        # active entries, and those within half a bandwidth below the threshold, where the
        # straight-through estimator gives the threshold a gradient
        return self._mask(pre, self.threshold.detach() - hp.jumprelu_bandwidth / 2)

    def _theta(self, v, cols):
        return self.threshold.expand_as(v) if cols is None else self.threshold[cols]

    def activate(self, v, cols, hp):
        return _JumpReLUSTE.apply(v, self._theta(v, cols), hp.jumprelu_bandwidth)

    def penalty(self, v, vals, cols, n_rows, hp):
        l0 = _StepSTE.apply(v, self._theta(v, cols), hp.jumprelu_bandwidth).sum()
        return hp.sparsity_coefficient * l0 / n_rows


class BatchTopKSAE(TopKSAE):
    """BatchTopK (Bussmann et al. 2024): the k * batch largest activations of the batch.
    Inference uses a threshold (EMA of the smallest selected activation, then calibrated to
    L0 = k): f = pre * H(pre - t), a JumpReLU SAE with a shared threshold, saved as one."""

    architecture = "batchtopk"

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        dev = torch.device(cfg.device)
        # float64, as SAELens: an EMA with rate 0.01 loses precision in float32
        self.register_buffer("topk_threshold", torch.zeros((), dtype=torch.float64, device=dev))
        # EMA updates so far: the bias correction needs it, and a resumed run must continue it
        self.register_buffer("topk_threshold_steps", torch.zeros((), dtype=torch.long, device=dev))

    def encode_with_hidden_pre(self, x):
        hidden_pre = self._sae_in(x) @ self.W_enc + self.b_enc
        t = self.topk_threshold.to(hidden_pre.dtype)
        return torch.relu(hidden_pre) * (hidden_pre > t), hidden_pre

    def select(self, pre, hp):
        n = pre.shape[0]
        flat = pre.reshape(-1).topk(min(self.cfg.k * n, pre.numel()), sorted=False).indices
        return Codes.from_flat(flat, n, self.d_sae)

    def after_step(self, vals, hp):
        """EMA bias-corrected as Adam's moments (a plain one from 0 at rate 0.01 is half way
        after 66 steps): dividing by 1 - (1 - lr)^t equals a rate of lr / (1 - (1 - lr)^t)."""
        positive = vals[vals > 0]
        if positive.numel() and hp.topk_threshold_lr > 0:
            self.topk_threshold_steps += 1
            t = int(self.topk_threshold_steps)
            rate = hp.topk_threshold_lr / (1 - (1 - hp.topk_threshold_lr) ** t)
            self.topk_threshold.add_(rate * (positive.min().double() - self.topk_threshold))

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        self.topk_threshold.data = self.topk_threshold.data.double()
        return out

    def saelens_export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        state, cfg = super().saelens_export()
        t = state.pop("topk_threshold")
        state.pop("topk_threshold_steps")
        state["threshold"] = torch.full_like(state["b_enc"], float(t))
        cfg.pop("k", None)
        cfg["metadata"].update(trained_architecture=self.cfg.architecture, k=self.cfg.k)
        cfg["architecture"] = "jumprelu"
        return state, cfg


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """Matryoshka BatchTopK (Bussmann et al. 2025): BatchTopK codes; the loss sums the
    reconstruction error of every nested prefix of latents [0, m_1), [0, m_2), ..., [0, d_sae),
    so early latents learn general features on their own."""

    architecture = "matryoshka_batchtopk"

    def reconstruction_loss(self, x, vals, codes, decode):
        widths = list(self.training_widths)
        group = torch.bucketize(codes.cols, torch.tensor(widths, device=codes.cols.device),
                                right=True)
        recon = self.b_dec.expand_as(x)
        inner = x.new_zeros(())
        for g in range(len(widths)):
            keep = group == g
            recon = recon + decode(vals[keep], codes.subset(keep))
            err = (recon - x).pow(2).sum(-1).mean()
            if g < len(widths) - 1:
                inner = inner + err
        return err, inner, recon

    @property
    def training_widths(self) -> tuple[int, ...]:
        return self._widths

    def set_matryoshka_widths(self, widths) -> None:
        widths = [int(w) for w in (widths or default_matryoshka_widths(self.d_sae))]
        if widths[-1] != self.d_sae:
            widths.append(self.d_sae)
        if any(b <= a for a, b in zip(widths, widths[1:])) or widths[0] <= 0:
            raise ValueError(f"matryoshka_widths must increase strictly up to d_sae={self.d_sae}, "
                             f"got {widths}")
        self._widths = tuple(widths)

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.set_matryoshka_widths(cfg.metadata.get("matryoshka_widths"))

    def saelens_export(self):
        state, cfg = super().saelens_export()
        cfg["metadata"]["matryoshka_widths"] = list(self._widths)
        return state, cfg


def default_matryoshka_widths(d_sae: int) -> list[int]:
    """d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae (Bussmann et al. 2025 nest doubling sizes)."""
    return [d_sae // 16, d_sae // 8, d_sae // 4, d_sae // 2, d_sae]


SAE_CLASSES: dict[str, type[SAE]] = {
    "standard": StandardSAE, "topk": TopKSAE, "jumprelu": JumpReLUSAE,
    "batchtopk": BatchTopKSAE, "matryoshka_batchtopk": MatryoshkaBatchTopKSAE,
}


def build_sae(cfg: SAEConfig) -> SAE:
    """A freshly allocated (zero) SAE of cfg.architecture."""
    return SAE_CLASSES[canonical_architecture(cfg.architecture)](cfg)


def expected_norm_scaling_factor(mean_norm: float, d_in: int) -> float:
    """SAELens `expected_average_only_in`: the s with E||s * x|| = sqrt(d_in)."""
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise ValueError(f"cannot normalise activations with mean norm {mean_norm}")
    return math.sqrt(d_in) / mean_norm
