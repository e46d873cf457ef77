"""What an intervention at one layer may use of the model, for code built on scoring.

Causal code (splices, attribution probes, ablation references, the token-injection
control) acts on the residual stream after a block. It reaches models/ only through here:
the hook points, a hook on a block's output, recording that output, and cutting a cached
context's graph above a layer. The KV-cache passes themselves stay inside scoring.
"""

from sae_reasoning.models.cached_forward import cut_above
from sae_reasoning.models.hooks import (
    capture_residuals,
    hook_point,
    parse_hook_point,
    patch_residual,
    recording,
)
from sae_reasoning.models.loading import LanguageModel

__all__ = [
    "LanguageModel",
    "capture_residuals",
    "cut_above",
    "hook_point",
    "parse_hook_point",
    "patch_residual",
    "recording",
]
