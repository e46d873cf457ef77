"""Language models: loading from an HF id, a local folder or a GGUF file, and hooking by layer."""

from sae_reasoning.models.hooks import (
    HookPointError,
    capture_residuals,
    hook_point,
    parse_hook_point,
    patch_residual,
    transformer_blocks,
)
from sae_reasoning.models.loading import LanguageModel, ModelHandle, ModelLoadError, ModelSpec

__all__ = [
    "HookPointError",
    "LanguageModel",
    "ModelHandle",
    "ModelLoadError",
    "ModelSpec",
    "capture_residuals",
    "hook_point",
    "parse_hook_point",
    "patch_residual",
    "transformer_blocks",
]
