"""capture: model + prompts -> activation shards at the hook points, and baseline scores."""

from sae_reasoning.pipelines.capture.pipeline import create_pipeline

__all__ = ["create_pipeline"]
