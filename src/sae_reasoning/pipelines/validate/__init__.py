"""validate: pre-flight check of every configured model (loads, layers exist, memory fits)."""

from sae_reasoning.pipelines.validate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
