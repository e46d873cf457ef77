"""BatchTopK SAE (Bussmann et al. 2024).

Training: the k * batch largest entries of relu(pre) over the whole batch (AuxK as TopK).
Inference: f = pre * H(pre - theta) with one shared theta, an EMA of the smallest selected
activation during training, calibrated after it so that L0 = k (calibration.py). At
inference it is a JumpReLU SAE, and SAELens stores it as one.
"""

from __future__ import annotations

from typing import Any

import torch

from sae_reasoning.sae.architectures.topk import TopKSAE
from sae_reasoning.sae.model import SAEConfig
from sae_reasoning.sae.sparse_ops import Codes


class BatchTopKSAE(TopKSAE):
    """BatchTopK (Bussmann et al. 2024): the k * batch largest activations of the batch.
    Inference uses a threshold (EMA of the smallest selected activation, then calibrated to
    L0 = k): f = pre * H(pre - t), a JumpReLU SAE with a shared threshold, saved as one."""

    architecture = "batchtopk"
    training_fields = TopKSAE.training_fields + ("topk_threshold_lr", "calibration_tokens")
    calibrated_threshold = True

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

    def inference_form(self) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
        """A JumpReLU SAE: the shared threshold in every latent's `threshold` entry."""
        _, state, meta = super().inference_form()
        t = state.pop("topk_threshold")
        state.pop("topk_threshold_steps")
        state["threshold"] = torch.full_like(state["b_enc"], float(t))
        meta.update(trained_architecture=self.cfg.architecture, k=self.cfg.k)
        return "jumprelu", state, meta
