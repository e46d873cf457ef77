"""JumpReLU SAE (Rajamanoharan et al. 2024).

    f_i = pre_i * H(pre_i - threshold_i),  loss = ||x - x_hat||^2 + l0 * sum_i H(..)

The threshold learns through straight-through estimators with a rectangle kernel of
width `bandwidth` (sparse_ops.jumprelu_ste, sparse_ops.step_ste).
"""

from __future__ import annotations

import torch
from torch import nn

from sae_reasoning.sae.architectures.training_sae import TrainingSAE
from sae_reasoning.sae.model import DTYPES, SAEConfig
from sae_reasoning.sae.sparse_ops import jumprelu_ste, step_ste


class JumpReLUSAE(TrainingSAE):
    """JumpReLU SAE (Rajamanoharan et al. 2024): f_i = pre_i * H(pre_i - threshold_i)."""

    architecture = "jumprelu"
    training_fields = ("l0_coefficient", "jumprelu_bandwidth", "jumprelu_init_threshold")
    sparsity_coefficient_field = "l0_coefficient"

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.threshold = nn.Parameter(
            torch.zeros(cfg.d_sae, device=torch.device(cfg.device), dtype=DTYPES[cfg.dtype])
        )

    @torch.no_grad()
    def initialize_training(self, config) -> None:
        self.threshold.fill_(config.jumprelu_init_threshold)

    def encode_with_hidden_pre(self, x):
        hidden_pre = self._sae_in(x) @ self.W_enc + self.b_enc
        return torch.relu(hidden_pre) * (hidden_pre > self.threshold), hidden_pre

    def select_mask(self, pre, hp):
        with torch.no_grad():  # a negative threshold would let negative pre-activations through
            self.threshold.clamp_(min=0.0)
        # active entries, and those within half a bandwidth below the threshold, where the
        # straight-through estimator gives the threshold a gradient
        return self._mask(pre, self.threshold.detach() - hp.jumprelu_bandwidth / 2)

    def _theta(self, v, cols):
        return self.threshold.expand_as(v) if cols is None else self.threshold[cols]

    def activate(self, v, cols, hp):
        return jumprelu_ste(v, self._theta(v, cols), hp.jumprelu_bandwidth)

    def penalty(self, v, vals, cols, n_rows, hp):
        l0 = step_ste(v, self._theta(v, cols), hp.jumprelu_bandwidth).sum()
        return hp.sparsity_coefficient * l0 / n_rows
