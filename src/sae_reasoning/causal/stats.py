"""How sure we are: paired tests on per-example effects of an ablation, and which features count.

Every ablation is scored on the same examples as the clean model, so effects are paired
differences d_i = ablated_i - clean_i. Per condition:

  bootstrap CI   percentile 95% interval of mean(d)
  sign-flip p    two-sided paired permutation test of mean(d) == 0
  McNemar p      exact test on the discordant pairs of a correct/incorrect outcome
  q (BH)         Benjamini-Hochberg adjusted p-values across all features tested

Examples are not always independent: GSM8K-style problems generated from one template
share most of their text, so their effects move together. With `clusters=` (one label per
example, e.g. the template id) the bootstrap resamples whole clusters and the sign-flip test
flips the sign of whole clusters; treating such rows as independent makes intervals too
narrow and p-values too small (calibration.py measures by how much). `clusters=None` makes
every example its own cluster, which is the row-level test.

`importance_calls` is the one decision rule, used by the analysis and by the calibration: a
feature is important when its BH q-value is below alpha and its |mean effect| exceeds what
random ("null") features reach.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from scipy.stats import binomtest, false_discovery_control


def cluster_sums(diffs, clusters=None) -> tuple[np.ndarray, np.ndarray]:
    """(per-cluster sums of the last axis of `diffs`, cluster sizes), in order of appearance.

    `diffs` is one vector or a matrix of vectors (one per row) on the same examples.
    `clusters`: any hashable labels; missing labels (None/NaN) form one cluster together.
    `clusters=None`: every example is its own cluster (the sums are the values themselves).
    """
    d = np.asarray(diffs, dtype=float)
    if clusters is None:
        return d, np.ones(d.shape[-1])
    labels = np.asarray(clusters)
    if labels.shape != d.shape[-1:]:
        raise ValueError(f"clusters has {labels.shape} labels for {d.shape[-1]} examples")
    if len(labels) == 0:
        return d, np.ones(0)
    codes, _ = pd.factorize(labels, use_na_sentinel=False)
    sizes = np.bincount(codes)
    order = np.argsort(codes, kind="stable")
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    return np.add.reduceat(d[..., order], starts, axis=-1), sizes.astype(float)


def bootstrap_ci(
    diffs, *, clusters=None, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of the mean of paired differences.

    Resamples clusters with replacement (examples when `clusters` is None); each resample's
    statistic is the mean over all rows of the drawn clusters (sum of their sums / their rows).
    """
    sums, sizes = cluster_sums(diffs, clusters)
    if len(sums) == 0:
        return float("nan"), float("nan")
    idx = _resamples(len(sums), n_boot, seed)
    means = sums[idx].sum(1) / sizes[idx].sum(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


@functools.lru_cache(maxsize=8)  # 180 clusters x 2,000 draws, int64: 2.9 MB each
def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) cluster indices drawn with replacement: the same draws for every condition
    tested on the same clusters (as drawn afresh from the seed), kept read-only."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    idx.flags.writeable = False
    return idx


def _sign_matrix(n: int, *, exact: bool, n_perm: int, seed: int) -> np.ndarray:
    """(n, n_patterns) signs: every pattern when exact (in itertools.product's order), else
    n_perm random ones. Kept, read-only: a sweep tests a hundred conditions on the same
    clusters, and drawing the signs cost more than the test."""
    return _all_signs(n) if exact else _random_signs(n, n_perm, seed)


@functools.lru_cache(maxsize=16)  # n <= exact_max (12): 400 KB at most each
def _all_signs(n: int) -> np.ndarray:
    bits = (np.arange(2**n)[None, :] >> np.arange(n)[::-1, None]) & 1  # row j: bit n-1-j
    signs = bits * 2.0 - 1.0
    signs.flags.writeable = False
    return signs


@functools.lru_cache(maxsize=8)  # 180 clusters x 10,000 patterns, float64: 14 MB each
def _random_signs(n: int, n_perm: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(n, n_perm), dtype=np.int8) * 2.0 - 1.0
    signs.flags.writeable = False
    return signs


def sign_flip_pvalues(
    diffs, *, clusters=None, n_perm: int = 10000, seed: int = 0, exact_max: int = 12
) -> np.ndarray:
    """Cluster sign-flip p-values for many vectors of differences on the same examples at once.

    `diffs` is (n_vectors, n_examples). Under H0 each cluster's effects are symmetric about 0,
    so the sign of each cluster sum is a coin flip; the statistic is |mean(d)| = |sum over
    clusters of s_c * sum_c| / n. All 2^G sign patterns when G <= exact_max clusters, else
    n_perm random ones (shared by every vector) and p = (1 + #{stat >= observed}) / (1 + n_perm).
    The products are einsum loops, not BLAS: on a few busy cores, BLAS threads that spin
    between these small products made the calibration several times slower.
    """
    sums, _ = cluster_sums(np.atleast_2d(diffs), clusters)
    exact = sums.shape[1] <= exact_max
    signs = _sign_matrix(sums.shape[1], exact=exact, n_perm=n_perm, seed=seed)
    observed = np.abs(sums.sum(1))
    stats = np.abs(np.einsum("fg,gp->fp", sums, signs))
    hits = np.sum(stats >= observed[:, None] * (1 - 1e-9) - 1e-12, axis=1)
    if exact:
        return hits / signs.shape[1]
    return (1 + hits) / (1 + n_perm)


def sign_flip_pvalue(
    diffs, *, clusters=None, n_perm: int = 10000, seed: int = 0, exact_max: int = 12
) -> float:
    """Two-sided paired permutation test of mean(d) == 0 by sign flips of whole clusters.

    Clusters whose differences sum to zero carry no sign information and are dropped, so the
    test is exact (all sign patterns) whenever at most `exact_max` clusters are informative.
    """
    sums, _ = cluster_sums(diffs, clusters)
    sums = sums[sums != 0]
    if len(sums) == 0:
        return 1.0
    return float(sign_flip_pvalues(sums[None], n_perm=n_perm, seed=seed, exact_max=exact_max)[0])


def mcnemar_exact(clean_correct, ablated_correct) -> tuple[float, int, int]:
    """(p, b, c): b = correct only clean, c = correct only ablated; binomial test of b vs b+c.

    Assumes independent examples; for clustered examples use the cluster sign-flip test of
    the accuracy differences (paired_effect's `p_accuracy_cluster`).
    """
    x = np.asarray(clean_correct, dtype=bool)
    y = np.asarray(ablated_correct, dtype=bool)
    b, c = int(np.sum(x & ~y)), int(np.sum(~x & y))
    return _binomial_p(b, b + c), b, c


@functools.lru_cache(maxsize=4096)  # a sweep meets the same few (b, b + c) many times
def _binomial_p(k: int, n: int) -> float:
    return 1.0 if n == 0 else float(binomtest(k, n, 0.5).pvalue)


def bh_qvalues(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN entries stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=float)
    q = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = false_discovery_control(p[ok], method="bh")
    return q


def paired_effect(
    clean_logprob,
    ablated_logprob,
    clean_correct,
    ablated_correct,
    *,
    clusters=None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Mean effects with their CIs and p-values, for one condition on one set of examples.

    `clusters` (one label per example) makes the CIs and the log-prob p-value cluster-aware.
    `p_accuracy` is McNemar's exact test, which assumes independent examples;
    `p_accuracy_cluster` is the cluster sign-flip test of the accuracy differences (with no
    clusters it is McNemar's p: on differences in {-1, 0, 1} the two tests coincide).
    """
    dl = np.asarray(ablated_logprob, float) - np.asarray(clean_logprob, float)
    da = np.asarray(ablated_correct, float) - np.asarray(clean_correct, float)
    lp_lo, lp_hi = bootstrap_ci(dl, clusters=clusters, n_boot=n_boot, seed=seed)
    acc_lo, acc_hi = bootstrap_ci(da, clusters=clusters, n_boot=n_boot, seed=seed)
    p_acc, b, c = mcnemar_exact(clean_correct, ablated_correct)
    p_acc_cluster = (
        p_acc if clusters is None else sign_flip_pvalue(da, clusters=clusters, seed=seed)
    )
    return {
        "delta_logprob_lo": lp_lo,
        "delta_logprob_hi": lp_hi,
        "delta_accuracy_lo": acc_lo,
        "delta_accuracy_hi": acc_hi,
        "p_logprob": sign_flip_pvalue(dl, clusters=clusters, seed=seed),
        "p_accuracy": p_acc,
        "p_accuracy_cluster": p_acc_cluster,
        "lost_correct": b,
        "gained_correct": c,
    }


def paired_difference(d_a, d_b, *, clusters=None, n_boot: int = 2000, seed: int = 0) -> dict:
    """Is condition a's effect different from condition b's on the same examples?

    d_a, d_b: per-example effects of two conditions (e.g. the top-K set and a random set).
    Returns diff = mean(d_a - d_b), its (cluster) bootstrap CI lo/hi, and the (cluster)
    sign-flip p-value of the per-example differences.
    """
    a, b = np.asarray(d_a, float), np.asarray(d_b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired effects need the same examples: {a.shape} vs {b.shape}")
    d = a - b
    lo, hi = bootstrap_ci(d, clusters=clusters, n_boot=n_boot, seed=seed)
    p = sign_flip_pvalue(d, clusters=clusters, seed=seed)
    return {"diff": float(d.mean()) if len(d) else float("nan"), "lo": lo, "hi": hi, "p": p}


def null_rank(n_null: int, quantile: float) -> int:
    """1-based rank of the order statistic used as the `quantile` quantile of n_null values.

    ceil(quantile * (n_null + 1)), the conformal rank: a new value exchangeable with the
    n_null ones exceeds that order statistic with probability <= 1 - quantile. Capped at
    n_null (the maximum) when there are too few values to reach it.
    """
    return max(1, min(n_null, math.ceil(quantile * (n_null + 1) - 1e-9)))


def min_null_size(quantile: float) -> int:
    """Fewest null values whose conformal rank does not need capping: q / (1 - q), 19 for 0.95."""
    return math.ceil(quantile / (1 - quantile) - 1e-9)


def _null_thresholds(
    abs_delta: np.ndarray, is_null: np.ndarray, group: np.ndarray, quantile: float
) -> tuple[np.ndarray, np.ndarray]:
    """(threshold, n_null) per row: the quantile of |delta| over the nulls of the row's group."""
    thr, n_null = np.full(len(group), np.nan), np.zeros(len(group), int)
    for g in np.unique(group):
        in_g = group == g
        a = np.sort(abs_delta[in_g & is_null & ~np.isnan(abs_delta)])
        n_null[in_g] = len(a)
        if len(a):
            thr[in_g] = a[null_rank(len(a), quantile) - 1]
    return thr, n_null


def _group_ids(rows: pd.DataFrame, group_cols: list) -> np.ndarray:
    """One integer per distinct combination of the group columns (NaN is a value too)."""
    ids = np.zeros(len(rows), dtype=np.int64)
    for col in group_cols:
        codes, uniques = pd.factorize(rows[col], use_na_sentinel=False)
        ids = ids * max(len(uniques), 1) + codes
    return ids


def importance_calls(
    rows: pd.DataFrame,
    *,
    alpha: float = 0.05,
    null_quantile: float = 0.95,
    group_cols=("mode", "benchmark", "endpoint"),
) -> pd.DataFrame:
    """Which features are important: significant after BH, and larger than random features.

    rows: one row per (feature, group) tested, with columns role ("candidate", "control" or
    "null"), feature, delta (mean effect), p (two-sided p-value) and `group_cols`.
    Returns a copy (same index and order) with these columns added:

      q               BH q-value in the row's role family. Each role is one family pooled
                      across every group (all modes, benchmarks and endpoints together):
                      candidates with candidates, controls with controls (the controls go
                      through the same procedure in a family of their own, so their false
                      positives can be counted), nulls with nulls. NaN p -> NaN q, not counted.
      null_threshold  the `null_quantile` quantile of |delta| over the null rows of the same
                      group: the ceil(null_quantile * (n + 1))-th smallest of the n values
                      (see null_rank; a zero-effect feature exchangeable with the nulls exceeds
                      it with probability <= 1 - null_quantile). NaN when the group has no nulls.
      n_null          number of null rows (non-NaN delta) in the group.
      null_too_small  n_null < min_null_size(null_quantile) (19 for 0.95): the rank had to be
                      capped at the largest null value, so the threshold is still computed but
                      the guarantee above no longer holds.
      significant     q < alpha.
      important       significant and |delta| > null_threshold (False when the threshold is NaN).

    The result's attrs hold alpha, null_quantile and group_cols (for summarize_calls).
    """
    group_cols = list(group_cols)
    role, p = rows["role"].to_numpy(), rows["p"].to_numpy(float)
    q = np.full(len(rows), np.nan)
    for r in pd.unique(role):
        q[role == r] = bh_qvalues(p[role == r])
    abs_delta = np.abs(rows["delta"].to_numpy(float))
    thr, n_null = _null_thresholds(
        abs_delta, role == "null", _group_ids(rows, group_cols), null_quantile
    )
    significant = q < alpha
    added = pd.DataFrame(
        {
            "q": q,
            "null_threshold": thr,
            "n_null": n_null,
            "null_too_small": n_null < min_null_size(null_quantile),
            "significant": significant,
            "important": significant & (abs_delta > thr),
        },
        index=rows.index,
    )
    out = pd.concat([rows.drop(columns=added.columns, errors="ignore"), added], axis=1)
    out.attrs.update(alpha=alpha, null_quantile=null_quantile, group_cols=group_cols)
    return out


def summarize_calls(calls: pd.DataFrame) -> dict:
    """Counts for the report: tested / significant / important per role, null sizes per group.

    `controls_important` are the procedure's false positives on features chosen at random.
    `null_size` maps "value/value/..." of the group columns to the number of null rows.
    """
    group_cols = calls.attrs.get("group_cols", ["mode", "benchmark", "endpoint"])
    out = {"alpha": calls.attrs.get("alpha"), "null_quantile": calls.attrs.get("null_quantile")}
    for role, name in (("candidate", "candidates"), ("control", "controls")):
        r = calls[calls.role == role]
        out[f"{name}_tested"] = int(r["p"].notna().sum())
        out[f"{name}_significant"] = int(r["significant"].sum())
        out[f"{name}_important"] = int(r["important"].sum())
    groups = calls.drop_duplicates(group_cols)
    key = groups[group_cols].astype(str).agg("/".join, axis=1)
    out["null_size"] = dict(zip(key, groups["n_null"].astype(int).tolist()))
    out["null_too_small"] = sorted(key[groups["null_too_small"].to_numpy(bool)].tolist())
    return out
