"""Real activation stores (ShardWriter) built from synthetic tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_reasoning.activations.store import ActivationSet, ShardWriter
from sae_reasoning.sae.ground_truth import planted_activations

HOOK = "blocks.3.hook_resid_post"


def write_store(
    root: Path,
    acts: torch.Tensor,
    *,
    hook: str = HOOK,
    benchmark: str = "bench",
    tokens_per_example: int = 10,
    shard_tokens: int = 1000,
    model: str = "toy",
) -> None:
    """Rows of `acts` [n, d] as consecutive examples of `tokens_per_example` tokens."""
    n, d = acts.shape
    w = ShardWriter(
        root / benchmark / hook,
        header={"model": model, "hook_point": hook},
        d_model=d,
        shard_tokens=shard_tokens,
    )
    idx = torch.arange(n)
    w.add(
        acts,
        example_index=idx // tokens_per_example,
        position=idx % tokens_per_example,
        token_id=torch.zeros(n, dtype=torch.int32),
    )
    w.close()


def planted_data(
    n: int,
    d_in: int = 32,
    n_features: int = 128,
    active: float = 3.0,
    noise: float = 0.01,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x = c @ D + noise with unit-norm planted directions D and ~`active` features per token."""
    return planted_activations(n, d_in, n_features, active, noise, seed)


@pytest.fixture
def toy_set(tmp_path) -> ActivationSet:
    """2,000 tokens (200 examples) of d_model 16, positions 0..9, no massive rows."""
    g = torch.Generator().manual_seed(1)
    write_store(tmp_path / "acts", torch.randn(2000, 16, generator=g) + 0.5)
    return ActivationSet.open(tmp_path / "acts")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""
