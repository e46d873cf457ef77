"""Residual-stream activations on disk: safetensors shards + manifest, written while the model
runs."""

from sae_reasoning.activations.store import (
    ActivationSet,
    ActivationStore,
    MassiveActivationFilter,
    ShardWriter,
)

__all__ = ["ActivationSet", "ActivationStore", "MassiveActivationFilter", "ShardWriter"]
