"""data_loading: raw benchmark rows -> normalised `examples` -> few-shot `prompts`."""

from sae_reasoning.pipelines.data_loading.pipeline import create_pipeline

__all__ = ["create_pipeline"]
