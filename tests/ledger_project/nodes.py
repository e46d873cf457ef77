"""Node functions for the ledger tests (importable: spawned workers unpickle them by name)."""

from __future__ import annotations

import mmap

import numpy as np

from sae_reasoning.ledger import add_tokens


def forward_known_batch(model) -> int:
    """Forward a right-padded batch of 3 texts; returns its non-padding token count."""
    import torch

    lm = model.load("cpu")
    enc = lm.tokenizer(
        ["What is 3 + 4?", "yes", "how many apples does Tom have left"],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return int(enc["attention_mask"].sum())


def hold_memory(n_mb: int) -> np.ndarray:
    """An array of n_mb MiB, touched, and returned: still alive when the node's window closes.

    Its own anonymous mapping, not malloc: malloc may hand back heap pages an earlier test
    freed but kept resident (mallopt thresholds raised in-process), and RSS would not grow.
    """
    buf = mmap.mmap(-1, n_mb * 2**20)
    array = np.frombuffer(buf, dtype=np.float64)
    array[:] = 1.0  # touch every page
    return array


def consume(n: int, upstream) -> int:
    """Counts `n` tokens, as the SAE trainer does; `upstream` only orders the nodes."""
    add_tokens(n)
    return n


def boom(x) -> None:
    raise ValueError("boom: this node fails")
