"""reporting: every model namespace's results -> PHASE4_REPORT.md, JSON and plots."""

from sae_reasoning.pipelines.reporting.pipeline import create_pipeline

__all__ = ["create_pipeline"]
