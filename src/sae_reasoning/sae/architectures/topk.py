"""TopK SAE (Gao et al. 2024).

    f = relu(TopK_k(pre)) per token,  loss = ||x - x_hat||^2 + AuxK (once latents are dead)

AuxK (TrainingSAE._aux_k_loss): the top k_aux dead latents reconstruct the residual.
"""

from __future__ import annotations

import torch

from sae_reasoning.sae.architectures.training_sae import TrainingSAE
from sae_reasoning.sae.sparse_ops import Codes


class TopKSAE(TrainingSAE):
    """TopK SAE (Gao et al. 2024): the k largest pre-activations per token, ReLU'd."""

    architecture = "topk"
    training_fields = ("k", "aux_k", "aux_k_coefficient")

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
