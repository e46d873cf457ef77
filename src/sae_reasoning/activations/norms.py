"""Residual norms of a shard folder: the statistics its manifest records, and the rule
(MassiveActivationFilter) for the rows SAE training leaves out."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class MassiveActivationFilter:
    """Which rows SAE training leaves out.

    Some models write a huge residual norm at the first position of every sequence
    (SmolLM2: ~140x the median at layer 15, whatever the token). Those rows would dominate
    an MSE objective, so by default they are excluded: position 0, and any row whose norm
    exceeds `max_norm_ratio` times the store's median norm. Set both off to keep all rows.
    """

    exclude_first_position: bool = True
    max_norm_ratio: float | None = 10.0

    def keep_mask(
        self, position: torch.Tensor, norm: torch.Tensor, median_norm: float
    ) -> torch.Tensor:
        keep = torch.ones_like(norm, dtype=torch.bool)
        if self.exclude_first_position:
            keep &= position != 0
        if self.max_norm_ratio is not None:
            keep &= norm <= self.max_norm_ratio * median_norm
        return keep

    def describe(self) -> dict:
        return asdict(self)


_LOG_BIN = 1e-3  # relative width of the histogram bins exact_median uses


def exact_median(chunks: Callable[[], Iterable[torch.Tensor]]) -> float | None:
    """torch.median (the lower middle value) of values that arrive in chunks, in bounded
    memory: a log-spaced histogram finds the bin holding the median, a second pass over
    `chunks()` (called twice) sorts only that bin. For positive values such as norms."""
    counts: dict[int, int] = {}
    n = 0
    for x in chunks():
        if len(x):
            bins, c = torch.unique(_log_bin(x), return_counts=True)
            for b, k in zip(bins.tolist(), c.tolist()):
                counts[b] = counts.get(b, 0) + k
            n += len(x)
    if n == 0:
        return None
    k, below = (n - 1) // 2, 0
    for b in sorted(counts):
        if below + counts[b] > k:
            inside = torch.cat([x[_log_bin(x) == b] for x in chunks() if len(x)])
            return float(inside.sort().values[k - below])
        below += counts[b]
    raise AssertionError("unreachable: the counts sum to n")


def _log_bin(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(torch.log(x.double().clamp_min(1e-30)) / _LOG_BIN).long()


def norm_statistics(store) -> dict:
    """The manifest's `norm_stats` and `massive_activations` blocks for the rows of an
    ActivationStore, read shard by shard, so memory does not grow with the token count."""

    def norms():
        return (s["norm"] for s in store.iter_columns("norm"))

    def firsts():
        return (s["norm"][s["position"] == 0] for s in store.iter_columns("norm", "position"))

    median = exact_median(norms) or 0.0
    first_median = exact_median(firsts)
    rule = MassiveActivationFilter()
    n = n_first = n_over = n_excluded = 0
    total, peak = 0.0, 0.0
    for cols in store.iter_columns("norm", "position"):
        norm, position = cols["norm"], cols["position"]
        n += len(norm)
        total += float(norm.double().sum())
        peak = max(peak, float(norm.max())) if len(norm) else peak
        n_first += int((position == 0).sum())
        n_over += int((norm > rule.max_norm_ratio * median).sum())
        n_excluded += int((~rule.keep_mask(position, norm, median)).sum())
    norm_stats = {
        "median": median,
        "mean": total / n if n else 0.0,
        "max": peak,
        "first_position_median": first_median,
        "first_position_ratio_to_median": first_median / median
        if first_median is not None and median
        else None,
    }
    massive = {
        # Stated here so a reader of the files knows which rows training leaves out.
        "rule": "SAE training and feature statistics leave out rows at position 0 "
        "(exclude_first_position) and rows whose norm exceeds max_norm_ratio x "
        "norm_stats.median; set by the massive_activations parameters",
        "default": rule.describe(),
        "n_first_position": n_first,
        "n_over_max_norm_ratio": n_over,
        "n_excluded_by_default": n_excluded,
    }
    return {"norm_stats": norm_stats, "massive_activations": massive}
