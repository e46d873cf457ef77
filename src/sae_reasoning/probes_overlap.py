"""The sparse probe's features against the causal ranking, and the disagreements the report names.

The causal ranking (`{model}.feature_ranking`, causal/summary.py `ranking_of`) lists the
candidates the causal stage ablated exactly, ordered by Δ gold log-prob under zero ablation
(rank 1: ablating it lowers the gold log-prob most), each with its `important` call. The
sparse probe (L1 logistic regression on SAE codes predicting `correct`) ranks features by
|weight|; features it gives no weight are unranked.

- top-k overlap: |probe top-k ∩ causal top-k|, against random overlap: if the probe's k
  were drawn at random from the population, the overlap would be hypergeometric. The
  population is the features live at the answer position on the select split (the only
  ones the L1 probe can weight) together with the causally tested ones.
- Spearman: over the features the causal stage tested (the only ones it ranks), probe
  |weight| (0 where the probe gives none) against −Δ gold log-prob (the causal order).
- Findings: a probe top-k feature that was tested and is not important "predicts, does not
  matter causally"; an important feature the probe gives zero weight "matters, not linearly
  predictive". Probe top-k features the causal stage never tested are listed as untested:
  nothing is known of their effect, so they are no finding either way.
  An L1 probe gives zero weight to a feature that adds nothing given the others, so every
  named feature also gets its held-out AUC alone (Mann-Whitney U, two-sided p); an important,
  zero-weight feature whose AUC alone is significant at alpha is listed apart, as "matters,
  predictive alone but redundant for the probe", not as "not linearly predictive".
"""

from __future__ import annotations

import numpy as np
from scipy.stats import hypergeom, mannwhitneyu, spearmanr


def overlap_test(probe_top: list[int], causal_top: list[int], population: int) -> dict:
    """Overlap of two sets drawn from `population` features, and P(overlap >= observed) at
    random."""
    both = sorted(set(probe_top) & set(causal_top))
    kp, kc = len(set(probe_top)), len(set(causal_top))
    p = float(hypergeom.sf(len(both) - 1, population, kc, kp)) if kp and kc else None
    return {
        "overlap": len(both),
        "features": both,
        "k_probe": kp,
        "k_causal": kc,
        "population": int(population),
        "expected_at_random": kp * kc / population if population else None,
        "p_hypergeometric": p,
    }


def rank_correlation(weights: dict[int, float], ranking: list[dict]) -> dict:
    tested = [r["feature"] for r in ranking]
    probe = np.array([abs(weights.get(f, 0.0)) for f in tested])
    causal = -np.array([r["delta_logprob"] for r in ranking], float)
    varied = len(tested) >= 3 and np.ptp(probe) > 0 and np.ptp(causal) > 0
    rho = spearmanr(probe, causal) if varied else None
    note = (
        "fewer than 3 tested features"
        if len(tested) < 3
        else "the probe gives every tested feature the same weight"
        if np.ptp(probe) == 0
        else "every tested feature has the same effect"
    )
    return {
        "over": "the features the causal stage tested exactly (probe |weight|, 0 if unweighted, "
        "vs -Δ gold log-prob)",
        "n": len(tested),
        "spearman": None if rho is None else float(rho.statistic),
        "p": None if rho is None else float(rho.pvalue),
        **({} if varied else {"note": note}),
    }


def auc_alone(x: np.ndarray, y: np.ndarray) -> dict:
    """AUC of one feature's activation alone for binary y, with the Mann-Whitney two-sided p."""
    pos, neg = x[y == 1], x[y == 0]
    if not len(pos) or not len(neg):
        return {"auc_alone": None, "p_auc": None}
    u = mannwhitneyu(pos, neg, alternative="two-sided")
    return {"auc_alone": float(u.statistic / (len(pos) * len(neg))), "p_auc": float(u.pvalue)}


def compare_with_ranking(
    sparse: dict,
    ranking: list[dict],
    live: np.ndarray,
    top_k: int,
    heldout_codes: np.ndarray,
    heldout_y: np.ndarray,
    alpha: float = 0.05,
) -> dict:
    """sparse: the `correct` SAE-code probe's result (its `weights`); ranking: one hook point's
    list; heldout_codes [n, d_sae] and heldout_y (0/1): for each named feature's AUC alone."""
    weights = {int(f): w for f, w in sparse["weights"]}
    ranked = sorted(ranking, key=lambda r: r["rank"])
    by_feature = {int(r["feature"]): r for r in ranked}
    probe_top = [int(f) for f, _ in sparse["weights"][:top_k]]
    causal_top = [int(r["feature"]) for r in ranked[:top_k]]
    population = len(set(map(int, live)) | set(by_feature))

    def causal(f: int) -> dict:
        r = by_feature[f]
        return {
            "feature": f,
            "causal_rank": r["rank"],
            "delta_logprob": r["delta_logprob"],
            "delta_logprob_ci": r.get("delta_logprob_ci"),
            "important": bool(r.get("important")),
            "probe_weight": weights.get(f, 0.0),
            **auc_alone(heldout_codes[:, f], heldout_y),
        }

    unweighted = [
        causal(f) for f in by_feature if by_feature[f].get("important") and f not in weights
    ]
    alone = [f for f in unweighted if f["p_auc"] is not None and f["p_auc"] < alpha]
    return {
        "top_k": top_k,
        "target": "correct",
        "alpha": alpha,
        "probe_top": probe_top,
        "causal_top": causal_top,
        "top_k_overlap": overlap_test(probe_top, causal_top, population),
        "rank_correlation": rank_correlation(weights, ranked),
        "predicts_not_causal": [
            causal(f) for f in probe_top if f in by_feature and not by_feature[f].get("important")
        ],
        "causal_not_predictive": [f for f in unweighted if f not in alone],
        "causal_redundant": alone,
        "both": [
            causal(f) for f in probe_top if f in by_feature and by_feature[f].get("important")
        ],
        "untested": [
            {"feature": f, "probe_weight": weights[f], **auc_alone(heldout_codes[:, f], heldout_y)}
            for f in probe_top
            if f not in by_feature
        ],
    }
