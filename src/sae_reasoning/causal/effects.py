"""From scores under each condition to effects, tests and importance calls.

Every condition is scored on the same held-out examples as the clean model, so effects
are paired per-example differences (ablated - clean) of three endpoints:

  logprob      gold answer's summed log-probability (every benchmark)
  accuracy     correct (exact greedy answer, or best-scoring choice), McNemar's exact test
  logit_diff   gold choice minus best other choice (choice benchmarks only)

Rows are per (condition, benchmark) plus "all" (the analysed benchmarks pooled). CIs and
sign-flip p-values resample template clusters where examples share one (selection.py).
Importance (stats.importance_calls): Benjamini-Hochberg over the candidate features, one
family pooled across modes, benchmarks and endpoints; the random controls go through the
same procedure in a family of their own, so their false positives can be counted; a
feature is important when significant and |Δ| beyond the null of random live features.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sae_reasoning.causal import stats as st

ENDPOINTS = {"logprob": "gold_logprob", "accuracy": "correct", "logit_diff": "logit_diff"}
SINGLE_ROLES = ("candidate", "control", "null")


def condition_effects(
    clean: pd.DataFrame, ablated: pd.DataFrame, clusters: pd.Series, *, n_boot: int, seed: int
) -> pd.DataFrame:
    """One row per benchmark and for "all": means, Δ with 95% CIs, p-values per endpoint."""
    m = _paired(clean, ablated)
    cluster = clusters.reindex(m["row"]).to_numpy()
    names = sorted(set(m["benchmark"]))
    groups = [(b, m["benchmark"] == b) for b in names]
    if len(groups) > 1:
        groups.append(("all", np.ones(len(cluster), dtype=bool)))
    rows = []
    for bench, at in groups:
        cl = cluster[at]
        row = {
            "benchmark": bench,
            "n": int(at.sum()),
            "n_clusters": int(pd.Series(cl).nunique()),
            "clean_accuracy": _mean(m["correct_clean"][at]),
            "ablated_accuracy": _mean(m["correct"][at]),
            "clean_logprob": _mean(m["gold_logprob_clean"][at]),
            "ablated_logprob": _mean(m["gold_logprob"][at]),
            "kl": _mean(m["kl"][at]),
            **st.paired_effect(
                m["gold_logprob_clean"][at],
                m["gold_logprob"][at],
                m["correct_clean"][at],
                m["correct"][at],
                clusters=cl,
                n_boot=n_boot,
                seed=seed,
            ),
        }
        row.update(_logit_diff_effect(m, at, cl, n_boot, seed))
        rows.append(row)
    if len(groups) == 1:  # "all" is the one benchmark: the same examples, so the same row
        rows.append({**rows[0], "benchmark": "all"})
    rows.sort(key=lambda r: r["benchmark"])
    return pd.DataFrame(rows).assign(
        delta_accuracy=lambda d: d.ablated_accuracy - d.clean_accuracy,
        delta_logprob=lambda d: d.ablated_logprob - d.clean_logprob,
    )


_PAIRED = ("gold_logprob", "correct", "logit_diff")


def _mean(x: np.ndarray) -> float:
    """pandas' Series.mean, bit for bit: NaN skipped (summed as 0), NaN when none is left."""
    x = np.asarray(x, dtype=float)
    ok = ~np.isnan(x)
    return float(np.where(ok, x, 0.0).sum() / ok.sum()) if ok.any() else float("nan")


def _paired(clean: pd.DataFrame, ablated: pd.DataFrame) -> dict[str, np.ndarray]:
    """Clean and ablated scores of the same examples side by side, as columns (clean's with
    the suffix _clean), in clean's order: the inner join on (row, benchmark). A sweep scores
    every condition on clean's examples in clean's order, where the join is the identity
    (and pandas' merge would cost more than the statistics: it runs per condition)."""
    keys = ["row", "benchmark"]
    same = len(clean) == len(ablated) and all(
        np.array_equal(clean[k].to_numpy(), ablated[k].to_numpy()) for k in keys
    )
    if not same:
        merged = clean.merge(ablated, on=keys, suffixes=("_clean", ""))
        clean = merged[keys + [f"{c}_clean" for c in _PAIRED if c in ablated]]
        clean = clean.rename(columns=lambda c: c.removesuffix("_clean"))
        ablated = merged
    out = {k: clean[k].to_numpy() for k in keys}
    out["kl"] = ablated["kl"].to_numpy()
    for c in _PAIRED:
        if c in ablated:
            out[c] = ablated[c].to_numpy()
            out[f"{c}_clean"] = clean[c].to_numpy()
    return out


def _logit_diff_effect(m: dict, at: np.ndarray, clusters, n_boot: int, seed: int) -> dict:
    keys = (
        "delta_logit_diff",
        "delta_logit_diff_lo",
        "delta_logit_diff_hi",
        "p_logit_diff",
        "clean_logit_diff",
    )
    if "logit_diff" not in m:
        return dict.fromkeys(keys, np.nan)
    ablated = m["logit_diff"][at].astype(float)
    clean = m["logit_diff_clean"][at].astype(float)
    ok = ~np.isnan(ablated) & ~np.isnan(clean)
    if not ok.any():
        return dict.fromkeys(keys, np.nan)
    diff = ablated[ok] - clean[ok]
    lo, hi = st.bootstrap_ci(diff, clusters=clusters[ok], n_boot=n_boot, seed=seed)
    return dict(
        zip(
            keys,
            (
                float(diff.mean()),
                lo,
                hi,
                st.sign_flip_pvalue(diff, clusters=clusters[ok], seed=seed),
                float(clean[ok].mean()),
            ),
        )
    )


def per_example_delta(
    scores: dict[str, pd.DataFrame], name: str, column: str = "gold_logprob"
) -> pd.Series:
    """Condition `name` minus clean, per prompts row."""
    a = scores[name].set_index("row")[column]
    c = scores["clean"].set_index("row")[column]
    return (a - c).sort_index()


def compare(
    scores: dict[str, pd.DataFrame], a: str, b: str, clusters: pd.Series, *, n_boot: int, seed: int
) -> dict:
    """Paired test of Δ(a) - Δ(b) in gold log-prob on the same examples (e.g. top-K vs a
    control)."""
    da, db = per_example_delta(scores, a), per_example_delta(scores, b)
    res = st.paired_difference(
        da.to_numpy(),
        db.reindex(da.index).to_numpy(),
        clusters=clusters.reindex(da.index).to_numpy(),
        n_boot=n_boot,
        seed=seed,
    )
    return {"a": a, "b": b, **{k: float(v) for k, v in res.items()}}


def family_rows(eff: pd.DataFrame, n_benchmarks: int) -> pd.Series:
    """Rows in the test family: single features, per benchmark; the pooled "all" rows too
    when more than one benchmark is analysed (with one, they repeat that benchmark's)."""
    single = eff["role"].isin(SINGLE_ROLES)
    return single & ((eff["benchmark"] != "all") | (n_benchmarks > 1))


def add_calls(
    eff: pd.DataFrame, n_benchmarks: int, *, alpha: float, null_quantile: float
) -> tuple[pd.DataFrame, dict]:
    """q-values, null thresholds and importance per endpoint (columns q_<e>, null_threshold_<e>,
    important_<e>), and `important` = important on any endpoint. Returns (effects, call summary)."""
    eff = eff.reset_index(drop=True).copy()
    fam = eff[family_rows(eff, n_benchmarks)]
    long = []
    for e in ENDPOINTS:
        # accuracy: the cluster sign-flip test (McNemar's when every example is its own cluster)
        pcol = "p_accuracy_cluster" if e == "accuracy" else f"p_{e}"
        part = fam[["role", "feature", "mode", "benchmark"]].assign(
            endpoint=e, delta=fam[f"delta_{e}"], p=fam[pcol], idx=fam.index
        )
        long.append(part[part["p"].notna()])
    long = pd.concat(long, ignore_index=True)
    calls = st.importance_calls(
        long, alpha=alpha, null_quantile=null_quantile, group_cols=("mode", "benchmark", "endpoint")
    )
    for e in ENDPOINTS:
        c = calls[calls["endpoint"] == e].set_index("idx")
        for col in ("q", "null_threshold", "important"):
            eff[f"{col}_{e}"] = c[col].reindex(eff.index)
    imp = eff[[f"important_{e}" for e in ENDPOINTS]]
    eff["important"] = (
        imp.fillna(False).astype(bool).any(axis=1).where(eff["role"].isin(SINGLE_ROLES))
    )
    if n_benchmarks == 1:  # the pooled rows repeat the one benchmark's: carry its calls
        cols = [c for c in eff.columns if c.startswith(("q_", "null_threshold_", "important"))]
        one = eff[(eff["benchmark"] != "all")].set_index("condition")[cols]
        pooled = eff["benchmark"] == "all"
        eff.loc[pooled, cols] = one.reindex(eff.loc[pooled, "condition"]).to_numpy()
    return eff, {**st.summarize_calls(calls), **_per_feature(calls)}


def _per_feature(calls: pd.DataFrame) -> dict:
    """Features (not rows) tested / significant / important per role: a feature counts once,
    when any of its modes, benchmarks or endpoints passes."""
    out = {}
    for role, name in (
        ("candidate", "candidates"),
        ("control", "controls"),
        ("null", "null_features"),
    ):
        by = calls[calls["role"] == role].groupby("feature")
        out[name] = {
            "tested": int(by.ngroups),
            "tests": int(by.size().sum()) if by.ngroups else 0,
            "significant": int(by["significant"].any().sum()),
            "important": int(by["important"].any().sum()),
        }
    return out


def effect_dict(row, keys=None) -> dict:
    """JSON-ready effect of one (condition, benchmark) row."""
    keys = keys or (
        "n",
        "delta_logprob",
        "delta_logprob_lo",
        "delta_logprob_hi",
        "delta_accuracy",
        "delta_accuracy_lo",
        "delta_accuracy_hi",
        "p_logprob",
        "p_accuracy",
        "kl",
        "delta_logit_diff",
        "delta_logit_diff_lo",
        "delta_logit_diff_hi",
        "p_logit_diff",
    )
    out = {}
    for k in keys:
        v = row.get(k) if hasattr(row, "get") else getattr(row, k, None)
        out[k] = (
            None
            if v is None or (isinstance(v, float) and np.isnan(v))
            else (int(v) if k == "n" else float(v))
        )
    return out
