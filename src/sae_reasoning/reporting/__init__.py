"""Cross-model report: markdown, JSON and plots built only from the stages' saved results."""
