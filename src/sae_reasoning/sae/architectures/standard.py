"""ReLU SAE ("standard" in SAELens; Bricken et al. 2023).

f = relu(pre),  loss = ||x - x_hat||^2 + l1 * sum_i f_i ||W_dec[i]||
"""

from __future__ import annotations

import torch

from sae_reasoning.sae.architectures.training_sae import TrainingSAE


class StandardSAE(TrainingSAE):
    """ReLU SAE ("standard" in SAELens; Bricken et al. 2023)."""

    architecture = "standard"
    training_fields = ("l1_coefficient",)
    sparsity_coefficient_field = "l1_coefficient"

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_pre = self._sae_in(x) @ self.W_enc + self.b_enc
        return torch.relu(hidden_pre), hidden_pre

    def select_mask(self, pre, hp):
        return self._mask(pre, 0.0)

    def penalty(self, v, vals, cols, n_rows, hp):
        # L1 weighted by decoder norms; the trainer keeps them at 1, so it is the plain sum.
        return hp.sparsity_coefficient * vals.sum() / n_rows
