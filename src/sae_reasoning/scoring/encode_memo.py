"""One SAE encode per residual tensor within a scope.

Stacked conditions (scoring/stacked.py) each splice the same clean rows: inside
`shared_encodes()`, `encode(sae, x)` computes the features of a given tensor once and
hands the same result to every later call on that tensor (the same object, unmodified
since: its version counter is part of the key). Outside a scope it is `sae.encode(x)`.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch

_scope: ContextVar[dict | None] = ContextVar("shared_encodes", default=None)


@contextmanager
def shared_encodes():
    """Within the block, encode() reuses features already computed for the same tensor."""
    token = _scope.set({})
    try:
        yield
    finally:
        _scope.reset(token)


def encode(sae, x: torch.Tensor) -> torch.Tensor:
    """sae.encode(x), computed once per (sae, tensor) inside shared_encodes()."""
    memo = _scope.get()
    if memo is None or x.requires_grad:
        return sae.encode(x)
    key = (id(sae), id(x), x._version)
    hit = memo.get(key)
    if hit is None:
        # the entry holds sae and x, so their ids are not reused while the scope lasts
        hit = memo[key] = (sae.encode(x), sae, x)
    return hit[0]
