"""The training step every architecture shares (SAELens's TrainingSAE).

An architecture says which entries of pre = (x - b_dec) @ W_enc + b_enc can be non-zero
(`select_mask` for elementwise rules, else `select`), the activation on them (`activate`)
and their penalty; `training_loss` computes the step's loss on the active entries only
(sparse_ops.py). `sparse=False` gives the same loss and gradients through dense matmuls
(the reference the fast path is tested against). `activate` and `penalty` get v: pre at
the entries (cols: their latents) or, in the dense regime, the whole [n, d_sae] matrix
(cols None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from sae_reasoning.sae import sparse_ops
from sae_reasoning.sae.model import SAE
from sae_reasoning.sae.sparse_ops import Codes


@dataclass
class TrainHParams:
    """What a training step needs besides the batch (from TrainingConfig, with schedules
    applied by the trainer)."""

    sparsity_coefficient: float = 0.0  # relu: L1 coefficient; jumprelu: L0 coefficient
    aux_k: int | None = None  # AuxK: dead latents used (None: d_in // 2, Gao et al.)
    aux_k_coefficient: float = 1 / 32  # AuxK loss weight (Gao et al.: 1/32)
    jumprelu_bandwidth: float = 0.05  # width of the rectangle kernel of the STE
    topk_threshold_lr: float = 0.01  # batchtopk: EMA rate of the inference threshold
    sparse: bool | None = None  # None: sparse products when codes are sparse enough
    sparse_max_density: float = 0.05  # above this fraction of active entries, dense matmuls


@dataclass
class StepOutput:
    loss: torch.Tensor  # what backward() is called on
    mse: torch.Tensor  # mean_tokens ||x - x_hat||^2 (full width)
    sparsity_loss: torch.Tensor  # coefficient * L1 (relu) or L0 (jumprelu); 0 for TopK family
    aux_loss: torch.Tensor  # AuxK (TopK family) and Matryoshka inner losses
    x_hat: torch.Tensor  # detached reconstruction
    l0: float  # mean active latents per token
    fired: torch.Tensor  # [d_sae] bool: latents active on some token of the batch
    sparse: bool  # whether the sparse products were used


class TrainingSAE(SAE):
    """An SAE with the shared training step; subclasses fill in the hooks below."""

    # TrainingConfig fields only this architecture reads (left out of other architectures'
    # fingerprints), and the one holding its sparsity coefficient (None: no such term).
    training_fields: ClassVar[tuple[str, ...]] = ()
    sparsity_coefficient_field: ClassVar[str | None] = None
    # Whether its shared inference threshold is calibrated after training (calibration.py).
    calibrated_threshold: ClassVar[bool] = False

    @classmethod
    def training_metadata(cls, config: Any, d_sae: int) -> dict[str, Any]:
        """cfg.metadata entries this architecture needs from the TrainingConfig."""
        return {}

    def initialize_training(self, config: Any) -> None:
        """Architecture-specific parameter init from the TrainingConfig (under no_grad)."""

    def select_mask(self, pre: torch.Tensor, hp: TrainHParams) -> torch.Tensor | None:
        return None

    def select(self, pre: torch.Tensor, hp: TrainHParams) -> Codes:
        return Codes.from_mask(self.select_mask(pre, hp))

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A [batch, d_sae]-sized buffer reused across steps: a fresh 75 MB tensor per step
        costs ~0.1 s of page faults on CPU (first touch), as much as the work done in it."""
        cache = self.__dict__.setdefault("_scratch_buffers", {})
        buf = cache.get(name)
        if (
            buf is None
            or tuple(buf.shape) != tuple(shape)
            or buf.dtype != dtype
            or buf.device != self.W_enc.device
        ):
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

    def reconstruction_loss(
        self, x, vals, codes, decode
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mse, extra loss, x_hat)."""
        x_hat = decode(vals, codes) + self.b_dec
        mse = (x_hat - x).pow(2).sum(-1).mean()
        return mse, mse.new_zeros(()), x_hat

    def training_loss(
        self, x: torch.Tensor, hp: TrainHParams, dead_mask: torch.Tensor | None = None
    ) -> StepOutput:
        """Loss of one training step on a (normalised) batch x [n, d_in]."""
        x = self._checked(x)
        n = x.shape[0]
        c = self.b_enc - self.b_dec @ self.W_enc if self.cfg.apply_b_dec_to_input else self.b_enc
        with torch.no_grad():  # (x - b_dec) @ W_enc + b_enc, written so b_dec costs a GEMV
            pre = torch.addmm(
                c.detach(),
                x,
                self.W_enc.detach(),
                out=self._scratch("pre", (n, self.d_sae), x.dtype),
            )
        mask = self.select_mask(pre, hp)  # ReLU / JumpReLU: elementwise selection
        sparse = hp.sparse
        if sparse is None:
            nnz = int(mask.sum()) if mask is not None else n * self.cfg.k
            sparse = nnz <= hp.sparse_max_density * n * self.d_sae
        if mask is not None and not sparse:  # dense codes: plain matmuls on [n, d_sae]
            vals, cols, mse, aux, x_hat, penalty = self._dense_terms(x, c, pre, hp)
        else:
            vals, cols, mse, aux, x_hat, penalty = self._sparse_terms(x, c, pre, mask, sparse, hp)
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
        return StepOutput(
            loss=mse + penalty + aux,
            mse=mse,
            sparsity_loss=penalty,
            aux_loss=aux,
            x_hat=x_hat.detach(),
            l0=l0,
            fired=fired,
            sparse=sparse,
        )

    def _dense_terms(self, x, c, pre, hp):
        """(vals, cols=None, mse, aux, x_hat, penalty) by matmuls on the whole [n, d_sae]."""
        v = sparse_ops.encode_all(x, self.W_enc, c, pre)
        vals = self.activate(v, None, hp)
        x_hat = vals @ self.W_dec + self.b_dec
        mse, aux = (x_hat - x).pow(2).sum(-1).mean(), x.new_zeros(())
        return vals, None, mse, aux, x_hat, self.penalty(v, vals, None, x.shape[0], hp)

    def _sparse_terms(self, x, c, pre, mask, sparse: bool, hp):
        """(vals, cols, mse, aux, x_hat, penalty) on the selected entries; `sparse` False:
        the same through dense products (the reference)."""
        codes = Codes.from_mask(mask) if mask is not None else self.select(pre, hp)
        W_dec = self.W_dec

        def decode(values, cs):
            return sparse_ops.decode(values, W_dec, cs, dense=not sparse)

        v = sparse_ops.encode_at(x, self.W_enc, c, pre, codes, dense=not sparse)
        vals = self.activate(v, codes.cols, hp)
        mse, aux, x_hat = self.reconstruction_loss(x, vals, codes, decode)
        penalty = self.penalty(v, vals, codes.cols, x.shape[0], hp)
        return vals, codes.cols, mse, aux, x_hat, penalty

    def _aux_k_loss(self, x, x_hat, pre, c, dead_mask, hp) -> torch.Tensor:
        """Gao et al. 2024: the top k_aux dead latents reconstruct the residual x - x_hat.

        Dense on the dead latents' columns: with k_aux = d_in / 2 of them per token the
        codes are too dense (~10%) for the sparse products to pay."""
        dead = dead_mask.nonzero().squeeze(1)
        k_aux = hp.aux_k or self.d_in // 2
        scale = min(len(dead) / k_aux, 1.0)  # as SAELens: less weight when few are dead
        k_aux = min(k_aux, len(dead))
        with torch.no_grad():
            pre_dead = torch.index_select(
                pre, 1, dead, out=self._scratch("pre_dead", (pre.shape[0], len(dead)), pre.dtype)
            )
            top = pre_dead.topk(k_aux, dim=1, sorted=False)
        v = sparse_ops.encode_rows_topk(x, self.W_enc[:, dead], c[dead], top.values, top.indices)
        f = torch.zeros_like(pre_dead).scatter(1, top.indices, torch.relu(v))
        e_hat = f @ self.W_dec[dead]
        residual = (x - x_hat).detach()
        return hp.aux_k_coefficient * scale * (e_hat - residual).pow(2).sum(-1).mean()
