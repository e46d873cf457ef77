"""SAE architectures, one module each (as SAELens's `saes/*_sae.py`), registered by their
SAELens name (our `architecture` parameter in brackets):

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

with pre = (x - b_dec) @ W_enc + b_enc. The shared base is model.py (SAE, SAEConfig), the
shared training step training_sae.py, the kernels sparse_ops.py.
"""

from __future__ import annotations

from sae_reasoning.sae.architectures.batchtopk import BatchTopKSAE
from sae_reasoning.sae.architectures.jumprelu import JumpReLUSAE
from sae_reasoning.sae.architectures.matryoshka_batchtopk import (
    MatryoshkaBatchTopKSAE,
    default_matryoshka_widths,
)
from sae_reasoning.sae.architectures.standard import StandardSAE
from sae_reasoning.sae.architectures.topk import TopKSAE
from sae_reasoning.sae.architectures.training_sae import StepOutput, TrainHParams, TrainingSAE
from sae_reasoning.sae.model import (
    ARCHITECTURE_ALIASES,
    K_ARCHITECTURES,
    SAEConfig,
    canonical_architecture,
)

# The registry: SAELens architecture name -> class.
SAE_CLASSES: dict[str, type[TrainingSAE]] = {
    cls.architecture: cls
    for cls in (StandardSAE, TopKSAE, JumpReLUSAE, BatchTopKSAE, MatryoshkaBatchTopKSAE)
}
assert set(SAE_CLASSES) == set(ARCHITECTURE_ALIASES.values())
assert set(K_ARCHITECTURES) == {a for a, c in SAE_CLASSES.items() if "k" in c.training_fields}

# TrainingConfig fields that only some architectures read.
ARCHITECTURE_SPECIFIC_FIELDS = frozenset(f for c in SAE_CLASSES.values() for f in c.training_fields)


def sae_class(architecture: str) -> type[TrainingSAE]:
    """The class of an architecture, by any of its names ('relu' -> StandardSAE)."""
    return SAE_CLASSES[canonical_architecture(architecture)]


def build_sae(cfg: SAEConfig) -> TrainingSAE:
    """A freshly allocated (zero) SAE of cfg.architecture."""
    return sae_class(cfg.architecture)(cfg)


__all__ = [
    "SAE_CLASSES",
    "ARCHITECTURE_SPECIFIC_FIELDS",
    "sae_class",
    "build_sae",
    "StandardSAE",
    "TopKSAE",
    "JumpReLUSAE",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
    "TrainingSAE",
    "TrainHParams",
    "StepOutput",
    "default_matryoshka_widths",
]
