"""Matryoshka BatchTopK SAE (Bussmann et al. 2025).

BatchTopK codes; the loss sums the reconstruction error of every nested prefix of the
latents (matryoshka_widths), so early latents learn general features on their own. Saved,
as BatchTopK, as a JumpReLU SAE (metadata keeps the widths).
"""

from __future__ import annotations

from typing import Any

import torch

from sae_reasoning.sae.architectures.batchtopk import BatchTopKSAE
from sae_reasoning.sae.model import SAEConfig


def default_matryoshka_widths(d_sae: int) -> list[int]:
    """d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae (Bussmann et al. 2025 nest doubling sizes)."""
    return [d_sae // 16, d_sae // 8, d_sae // 4, d_sae // 2, d_sae]


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """Matryoshka BatchTopK (Bussmann et al. 2025): BatchTopK codes; the loss sums the
    reconstruction error of every nested prefix of latents [0, m_1), [0, m_2), ..., [0, d_sae),
    so early latents learn general features on their own."""

    architecture = "matryoshka_batchtopk"
    training_fields = BatchTopKSAE.training_fields + ("matryoshka_widths",)

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.set_matryoshka_widths(cfg.metadata.get("matryoshka_widths"))

    @classmethod
    def training_metadata(cls, config, d_sae: int) -> dict[str, Any]:
        return {"matryoshka_widths": config.matryoshka_widths or default_matryoshka_widths(d_sae)}

    def reconstruction_loss(self, x, vals, codes, decode):
        widths = list(self.training_widths)
        group = torch.bucketize(
            codes.cols, torch.tensor(widths, device=codes.cols.device), right=True
        )
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
            raise ValueError(
                f"matryoshka_widths must increase strictly up to d_sae={self.d_sae}, got {widths}"
            )
        self._widths = tuple(widths)

    def inference_form(self) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
        arch, state, meta = super().inference_form()
        meta["matryoshka_widths"] = list(self._widths)
        return arch, state, meta
