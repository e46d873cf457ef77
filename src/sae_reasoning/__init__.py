"""sae-reasoning: which SAE features a language model causally uses to solve reasoning problems."""

__version__ = "0.1.0"
