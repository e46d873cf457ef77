"""sae_training pipeline: trains an SAE per configured hook point on captured activations."""

from sae_reasoning.pipelines.sae_training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
