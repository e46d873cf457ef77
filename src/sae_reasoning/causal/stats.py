"""How sure we are: paired tests on per-example effects of an ablation.

Every ablation is scored on the same examples as the clean model, so effects are paired
differences d_i = ablated_i - clean_i. Per condition:

  bootstrap CI   percentile 95% interval of mean(d), resampling examples with replacement
  sign-flip p    two-sided paired permutation test of mean(d) == 0 (exact up to 12 examples)
  McNemar p      exact test on the discordant pairs of a correct/incorrect outcome
  q (BH)         Benjamini-Hochberg adjusted p-values across all features tested
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.stats import binomtest, false_discovery_control


def bootstrap_ci(diffs, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the mean of paired differences (examples resampled with replacement)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def sign_flip_pvalue(diffs, *, n_perm: int = 10000, seed: int = 0, exact_max: int = 12) -> float:
    """Two-sided paired permutation test: under H0 each difference's sign is a coin flip."""
    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]                      # zero differences carry no sign information
    if len(d) == 0:
        return 1.0
    observed = abs(d.mean())
    if len(d) <= exact_max:
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=len(d))))
        stats = np.abs((signs * d).mean(1))
        return float(np.mean(stats >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(n_perm, len(d)))
    stats = np.abs((signs * d).mean(1))
    # +1: the observed labelling is one of the permutations (never p = 0 from sampling).
    return float((1 + np.sum(stats >= observed - 1e-12)) / (1 + n_perm))


def mcnemar_exact(clean_correct, ablated_correct) -> tuple[float, int, int]:
    """(p, b, c): b = correct only clean, c = correct only ablated; binomial test of b vs b+c."""
    x = np.asarray(clean_correct, dtype=bool)
    y = np.asarray(ablated_correct, dtype=bool)
    b, c = int(np.sum(x & ~y)), int(np.sum(~x & y))
    if b + c == 0:
        return 1.0, b, c
    return float(binomtest(b, b + c, 0.5).pvalue), b, c


def bh_qvalues(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN entries stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=float)
    q = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = false_discovery_control(p[ok], method="bh")
    return q


def paired_effect(clean_logprob, ablated_logprob, clean_correct, ablated_correct, *,
                  n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean effects with their CIs and p-values, for one condition on one set of examples."""
    dl = np.asarray(ablated_logprob, float) - np.asarray(clean_logprob, float)
    da = np.asarray(ablated_correct, float) - np.asarray(clean_correct, float)
    lp_lo, lp_hi = bootstrap_ci(dl, n_boot=n_boot, seed=seed)
    acc_lo, acc_hi = bootstrap_ci(da, n_boot=n_boot, seed=seed)
    p_acc, b, c = mcnemar_exact(clean_correct, ablated_correct)
    return {
        "delta_logprob_lo": lp_lo, "delta_logprob_hi": lp_hi,
        "delta_accuracy_lo": acc_lo, "delta_accuracy_hi": acc_hi,
        "p_logprob": sign_flip_pvalue(dl, seed=seed), "p_accuracy": p_acc,
        "lost_correct": b, "gained_correct": c,
    }
