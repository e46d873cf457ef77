"""The inference threshold of BatchTopK-family SAEs, calibrated so that inference L0 = k.

Training keeps the k * n largest pre-activations of each n-token batch; inference applies
one shared threshold t to every token, f = pre * H(pre - t) (a JumpReLU SAE, as SAELens
saves BatchTopK). The trainer's EMA of the smallest selected activation only estimates t,
and lags while the encoder still moves. So after training t is set from N training
tokens: halfway between the (kN)-th and (kN + 1)-th largest pre-activation, so exactly kN
of them exceed it and the mean inference L0 on those tokens is k (ties aside). Only the
kN + 1 largest values are kept across batches: memory O(kN), not O(N * d_sae).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class TopValues:
    """The `size` largest values seen so far (as a multiset, unordered)."""

    def __init__(self, size: int):
        self.size = int(size)
        self.values: torch.Tensor | None = None

    def update(self, v: torch.Tensor) -> None:
        v = v.reshape(-1)
        if self.values is not None and len(self.values) >= self.size:
            v = v[v > self.values.min()]  # cannot enter the top: skip the big merge
        merged = v if self.values is None else torch.cat([self.values, v])
        if len(merged) > self.size:
            merged = merged.topk(self.size, sorted=False).values
        self.values = merged


def shared_threshold(top: torch.Tensor, n_active: int) -> float:
    """t >= 0 with #{top > t} = n_active, given the n_active + 1 largest pre-activations
    (fewer: every entry may fire, t = 0)."""
    if n_active < 1 or len(top) <= n_active:
        return 0.0
    nxt, kth = top.double().topk(2, largest=False, sorted=True).values.tolist()
    return max(0.5 * (kth + nxt), 0.0)  # f > 0 needs pre > 0 anyway


def _pre_activations(sae, x: torch.Tensor) -> torch.Tensor:
    # the inference path itself, so the saved SAE compares exactly these values with t
    return sae.encode_with_hidden_pre(x.to(sae.device))[1]


@torch.no_grad()
def calibrate_topk_threshold(
    sae, batches: Iterable[torch.Tensor], max_tokens: int
) -> dict[str, Any]:
    """Set `sae.topk_threshold` so that its mean inference L0 over the first `max_tokens`
    rows of `batches` (raw units) is sae.cfg.k. Returns k, the threshold before
    (`topk_threshold_ema`) and after, the tokens used and the inference L0 on them."""
    k = int(sae.cfg.k)
    top, n = TopValues(k * max_tokens + 1), 0
    for x in batches:
        x = x[: max_tokens - n]
        top.update(_pre_activations(sae, x))
        n += len(x)
        if n >= max_tokens:
            break
    if n == 0:
        raise ValueError("no tokens to calibrate the inference threshold on")
    values = top.values
    if len(values) > k * n + 1:  # fewer tokens than max_tokens
        values = values.topk(k * n + 1, sorted=False).values
    ema = float(sae.topk_threshold)
    sae.topk_threshold.fill_(shared_threshold(values, k * n))
    # Counted as encode does (pre > t in the SAE's dtype). t is at least the smallest kept
    # value, so every pre-activation above t is among the kept ones.
    t = sae.topk_threshold.to(values.dtype)
    return {
        "k": k,
        "topk_threshold": float(sae.topk_threshold),
        "topk_threshold_ema": ema,
        "calibration_tokens": n,
        "inference_l0_train": float((values > t).sum()) / n,
    }
