"""causal: SAE features ablated in the running model -> effects, ranking, summary."""

from sae_reasoning.pipelines.causal.pipeline import create_pipeline

__all__ = ["create_pipeline"]
