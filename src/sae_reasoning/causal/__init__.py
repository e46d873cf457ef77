"""Causal analysis: SAE features ablated inside the running model, and what that does to answers."""
