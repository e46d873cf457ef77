"""Does the importance procedure keep its promises? Simulated studies where the truth is known.

One simulated study mirrors the causal stage: per-example effects d[f, i] of ablating feature
f on held-out example i, for candidates (some with a real mean effect, the rest with none),
random controls and random "null" features (no real effect), in one or more groups
(benchmarks). The noise is meant to be no kinder than real data:

  templates        examples come in clusters (GSM8K-style templates, random sizes) and each
                   feature's effect has a random per-cluster component (`cluster_sd`)
  heavy-ish tails  per-example noise is Student-t with `tail_df` degrees of freedom
  heterogeneity    examples differ in scale: noise and real effects are multiplied by a
                   per-example log-normal factor (`hetero` = its log-sd, mean 1)
  tiny biases      ablations are deterministic, so a feature with "no effect" still has some
                   small consistent mean effect: every non-true feature gets a fixed bias
                   ~ N(0, bias^2), below the null features' spread; only the magnitude
                   criterion (|delta| above the null quantile) can reject those

The study then runs exactly the analysis procedure: per-feature cluster sign-flip p-values
(stats.sign_flip_pvalues; row-level ones with `cluster_aware=False`, to show why clusters
matter), then stats.importance_calls. `simulate` scores one study, `calibrate` averages many.

What the measurements say (benchmarks/calibration.py prints them; SE of a mean effect ~0.16):
with cluster sign flips the FDR of the important calls stays below alpha at the default bias
sd 0.03, is about alpha at bias sd 0.08 (~0.5 SE) and ~0.14 at bias sd 0.15 (~1 SE): features
with no real effect but a bias the size of the null's spread then pass both criteria. What
holds at any bias is the magnitude criterion's own promise: a feature exchangeable with the
nulls (a control) passes it with probability <= 1 - null_quantile.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sae_reasoning.causal.stats import importance_calls, sign_flip_pvalues

DEFAULTS = dict(
    n_groups=1,
    n_clusters=20,
    cluster_size=5,
    n_candidates=50,
    n_true=10,
    effect=0.5,
    n_controls=20,
    n_null=50,
    cluster_sd=0.5,
    noise_sd=1.0,
    tail_df=4.0,
    hetero=0.5,
    bias=0.03,
    alpha=0.05,
    null_quantile=0.95,
    n_perm=2000,
    cluster_aware=True,
)


def _effects(rng, mu: np.ndarray, s: dict) -> tuple[np.ndarray, np.ndarray]:
    """(per-example effects, n_features x n_examples; cluster label of each example)."""
    sizes = 1 + rng.poisson(s["cluster_size"] - 1, s["n_clusters"])
    labels = np.repeat(np.arange(s["n_clusters"]), sizes)
    n_feat, n_ex = len(mu), len(labels)
    scale = np.exp(s["hetero"] * rng.standard_normal(n_ex) - s["hetero"] ** 2 / 2)
    df = s["tail_df"]
    tails = rng.standard_t(df, (n_feat, n_ex)) / np.sqrt(df / (df - 2))
    per_cluster = rng.standard_normal((n_feat, s["n_clusters"]))[:, labels]
    bias = np.where(mu == 0, s["bias"] * rng.standard_normal(n_feat), 0.0)
    d = (
        mu[:, None] * scale
        + bias[:, None]
        + s["cluster_sd"] * per_cluster
        + s["noise_sd"] * scale * tails
    )
    return d, labels


def study(seed: int, **settings) -> pd.DataFrame:
    """The importance_calls table of one simulated study, with a `true` column."""
    if unknown := set(settings) - set(DEFAULTS):
        raise TypeError(f"unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **settings}
    rng = np.random.default_rng(seed)
    roles = (
        ["candidate"] * s["n_candidates"] + ["control"] * s["n_controls"] + ["null"] * s["n_null"]
    )
    mu = np.zeros(len(roles))
    mu[: s["n_true"]] = -s["effect"]
    delta, p = [], []
    for g in range(s["n_groups"]):
        d, labels = _effects(rng, mu, s)
        delta.append(d.mean(1))
        p.append(
            sign_flip_pvalues(
                d,
                clusters=labels if s["cluster_aware"] else None,
                n_perm=s["n_perm"],
                seed=seed * 1000 + g,
            )
        )
    k = s["n_groups"]
    rows = pd.DataFrame(
        {
            "role": np.tile(roles, k),
            "feature": np.tile(np.arange(len(roles)), k),
            "delta": np.concatenate(delta),
            "p": np.concatenate(p),
            "true": np.tile(mu != 0, k),
            "mode": "zero",
            "benchmark": np.repeat([f"b{g}" for g in range(k)], len(roles)),
            "endpoint": "logprob",
        }
    )
    return importance_calls(rows, alpha=s["alpha"], null_quantile=s["null_quantile"])


def simulate(seed: int, **settings) -> dict:
    """Score one simulated study against its truth.

    fdr                false important candidate calls / max(important candidate calls, 1)
    power              true candidates called important / true candidates (NaN if none)
    control_fp_rate    controls called important / controls
    control_magnitude_rate  controls with |delta| > null threshold / controls (the magnitude
                       criterion alone; <= 1 - null_quantile in expectation)
    fdr_significant    as fdr, for the BH criterion alone (q < alpha)
    zero_effect_p_below_alpha  share of no-effect candidates and controls with raw p < alpha
    null_threshold     mean over groups of the |delta| threshold set by the null features
    n_calls, false_calls  important candidate calls, and how many of them are false
    """
    c = study(seed, **settings)
    alpha = c.attrs["alpha"]
    role, true = c["role"].to_numpy(), c["true"].to_numpy(bool)
    called, sig = c["important"].to_numpy(bool), c["significant"].to_numpy(bool)
    cand, ctrl = role == "candidate", role == "control"
    above = np.abs(c["delta"].to_numpy()) > c["null_threshold"].to_numpy()
    n_calls, false = int((cand & called).sum()), int((cand & called & ~true).sum())
    n_true = int((cand & true).sum())
    zero = (cand | ctrl) & ~true
    return {
        "fdr": false / max(n_calls, 1),
        "power": (cand & called & true).sum() / n_true if n_true else np.nan,
        "control_fp_rate": float(called[ctrl].mean()),
        "control_magnitude_rate": float(above[ctrl].mean()),
        "fdr_significant": int((cand & sig & ~true).sum()) / max(int((cand & sig).sum()), 1),
        "zero_effect_p_below_alpha": float((c["p"].to_numpy()[zero] < alpha).mean()),
        "null_threshold": float(np.nanmean(c["null_threshold"].to_numpy())),
        "n_calls": n_calls,
        "false_calls": false,
    }


def calibrate(n_seeds: int, *, first_seed: int = 0, **settings) -> dict:
    """Means over `n_seeds` simulated studies, with Monte Carlo standard errors (`*_se`).

    Keys: mean_fdr, fdr_se, power, power_se, control_fp_rate, control_fp_se, and the same
    mean/se pairs for control_magnitude_rate, fdr_significant, zero_effect_p_below_alpha;
    mean_calls; null_threshold (mean); any_false_call_rate (share of studies with at least
    one false call); n_seeds; settings (every setting used, defaults included).
    """
    runs = pd.DataFrame([simulate(first_seed + k, **settings) for k in range(n_seeds)])

    def mean_se(col):
        x = runs[col].dropna()
        return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else np.nan

    out = {}
    for col, name, se in (
        ("fdr", "mean_fdr", "fdr_se"),
        ("power", "power", "power_se"),
        ("control_fp_rate", "control_fp_rate", "control_fp_se"),
    ):
        out[name], out[se] = mean_se(col)
    for col in ("control_magnitude_rate", "fdr_significant", "zero_effect_p_below_alpha"):
        out[col], out[f"{col}_se"] = mean_se(col)
    out["mean_calls"] = float(runs.n_calls.mean())
    out["null_threshold"] = float(runs.null_threshold.mean())
    out["any_false_call_rate"] = float((runs.false_calls > 0).mean())
    out["n_seeds"] = n_seeds
    out["settings"] = {**DEFAULTS, **settings}
    return out
