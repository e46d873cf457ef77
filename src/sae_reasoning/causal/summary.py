"""One SAE's causal results as JSON: the ranking of candidates and the summary the report reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from sae_reasoning.causal.circuits import circuit_quality
from sae_reasoning.causal.effects import ENDPOINTS, compare, effect_dict, per_example_delta

METRICS = {
    "logprob": "Δ gold log-prob: summed log-probability of the gold answer tokens, ablated − clean",
    "accuracy": (
        "Δ accuracy: exact greedy answer (open) or best-scoring choice (choice), ablated − clean"
    ),
    "logit_diff": (
        "Δ logit difference: gold choice − best other choice (choice benchmarks only), "
        "ablated − clean"
    ),
}


BOOTSTRAP = (
    "percentile interval of the mean paired difference (ablated − clean) over bootstrap "
    "resamples of clusters (examples sharing a template go together, others alone), drawn with "
    "replacement from the rows it describes (one benchmark, or all benchmarks pooled)"
)


def ranking_of(eff: pd.DataFrame, circuit: list[int]) -> list[dict]:
    """Candidates by exact Δ gold log-prob under zero ablation (pooled rows), with tests and
    calls."""
    here = eff[(eff["benchmark"] == "all") & (eff["role"] == "candidate")]
    zero = here[here["mode"] == "zero"].sort_values("delta_logprob")
    out = []
    for r, row in enumerate(zero.itertuples()):
        feat = int(row.feature)
        # Every row of the feature (modes, benchmarks): the rows the call counts in the summary.
        mine = eff[(eff["feature"] == feat) & (eff["role"] == "candidate")]
        called = mine["important"].fillna(False).astype(bool)
        per_bench = eff[
            (eff["feature"] == feat)
            & (eff["role"] == "candidate")
            & (eff["mode"] == "zero")
            & (eff["benchmark"] != "all")
        ]
        out.append(
            {
                "rank": r + 1,
                "feature": feat,
                "delta_logprob": float(row.delta_logprob),
                "delta_logprob_ci": [float(row.delta_logprob_lo), float(row.delta_logprob_hi)],
                "delta_accuracy": float(row.delta_accuracy),
                "delta_accuracy_ci": [float(row.delta_accuracy_lo), float(row.delta_accuracy_hi)],
                "delta_logit_diff": _f(row.delta_logit_diff),
                "p_logprob": float(row.p_logprob),
                "q_logprob": _f(row.q_logprob),
                "p_accuracy_mcnemar": float(row.p_accuracy),
                "q_accuracy": _f(row.q_accuracy),
                "q_logit_diff": _f(row.q_logit_diff),
                "null_threshold_logprob": _f(row.null_threshold_logprob),
                # Important in any mode, benchmark or endpoint (the rule the controls go through).
                "important": bool(called.any()),
                "important_modes": sorted(mine.loc[called, "mode"].unique()),
                "kl": float(row.kl),
                "attribution_estimate": float(row.attribution),
                "firing_rate": float(row.firing_rate),
                "in_circuit": feat in circuit,
                "per_benchmark": {
                    b: effect_dict(x) for b, x in per_bench.set_index("benchmark").iterrows()
                },
            }
        )
    return out


def _f(x):
    return None if x is None or pd.isna(x) else float(x)


def _row(here: pd.DataFrame, name: str) -> dict | None:
    return effect_dict(here.loc[name]) if name in here.index else None


def summarise(
    measured,
    choice,
    stats: dict,
    clusters: pd.Series,
    cfg,
    *,
    layer: int,
    d_sae: int,
    select,
    heldout,
) -> tuple[list[dict], dict, dict]:
    """(ranking, summary, circuit) of one SAE, from its exact ablations (measure.Measured) and
    the features chosen on the select split (selection.FeatureChoice)."""
    eff, search = measured.effects, choice.search
    summary = hook_summary(
        eff,
        measured.scores,
        choice.draws,
        search,
        stats,
        clusters,
        cfg,
        layer=layer,
        d_sae=d_sae,
        alive=int(choice.alive.sum()),
        calls=measured.calls,
        cost=measured.cost,
        select=select,
        heldout=heldout,
    )
    summary["active_at_ablated_positions"] = int(choice.active.sum())
    # Before the floor's snap: the identity splice's raw change is rounding alone.
    summary["splice_identity_max_abs_logprob_change"] = measured.floor.identity["logprob"]
    summary["numerical_floor"] = measured.floor.as_dict()
    ranking = ranking_of(eff, search.features)
    features = [
        {
            "feature": f,
            "attribution": float(choice.circuit_estimate[f]),
            "attribution_zero": float(choice.estimate[f]),
            "firing_rate": float(stats["firing_rate"][f]),
            "order": i + 1,
            "exact_delta_logprob": next(
                (r["delta_logprob"] for r in ranking if r["feature"] == f), None
            ),
        }
        for i, f in enumerate(search.features)
    ]
    return ranking, summary, {**summary["circuit"], "features": features}


def hook_summary(
    eff,
    scores,
    draws,
    search,
    stats,
    clusters,
    cfg,
    *,
    layer,
    d_sae,
    alive,
    calls,
    cost,
    select,
    heldout,
) -> dict:
    here = eff[eff["benchmark"] == "all"].set_index("condition", drop=False)
    zero_cand = here[(here["mode"] == "zero") & (here["role"] == "candidate")]
    ctrl = here[(here["mode"] == "zero") & (here["role"] == "control")]
    all_row = here.loc["zero:all"]
    return {
        "layer": layer,
        "d_sae": int(d_sae),
        "alive_features": alive,
        "positions": cfg.positions,
        "first_position_exempt": bool(
            cfg.positions == "all" and cfg.exclude.exclude_first_position
        ),
        "benchmarks": [b.name for b in heldout],
        "examples": cfg.examples,
        "n_select_examples": sum(len(b.examples) for b in select),
        "n_heldout_examples": sum(len(b.examples) for b in heldout),
        "n_heldout_clusters": int(clusters.reindex(scores["clean"]["row"]).nunique()),
        "metrics": {e: METRICS[e] for e in ENDPOINTS},
        # How every 95% CI here was drawn, per benchmark and pooled alike (stats.bootstrap_ci).
        "bootstrap": {
            "n_boot": cfg.n_boot,
            "seed": cfg.seed,
            "level": 0.95,
            "procedure": BOOTSTRAP,
        },
        "clean": _per_benchmark(scores["clean"]),
        "all_features_zero": effect_dict(all_row),
        "top_feature_mean_delta_logprob": float(zero_cand["delta_logprob"].mean())
        if len(zero_cand)
        else None,
        "random_control_mean_delta_logprob": float(ctrl["delta_logprob"].mean())
        if len(ctrl)
        else None,
        "spearman_attribution_vs_exact": _spearman(zero_cand),
        "significance": {
            **calls,
            "alpha": cfg.alpha,
            "null_quantile": cfg.null_quantile,
            "n_null_features": len(draws.null),
            "modes": list(cfg.modes),
            "family": "candidate features x modes x benchmarks x endpoints (one BH family); "
            "controls and null features in families of their own",
            "null": _null_table(eff),
            "cost": cost,
        },
        "controls": _controls(here, scores, draws, clusters, cfg),
        "error_term": _error_term(here),
        "circuit": circuit_summary(search, here, scores, clusters, cfg, alive),
    }


def _spearman(zero_cand: pd.DataFrame) -> float | None:
    """Rank correlation of the attribution estimate with the exact Δ over the candidates."""
    varied = (
        len(zero_cand) > 2
        and zero_cand["attribution"].nunique() > 1
        and zero_cand["delta_logprob"].nunique() > 1
    )
    rho = (
        spearmanr(zero_cand["attribution"], zero_cand["delta_logprob"]).statistic
        if varied
        else None
    )
    return None if rho is None or np.isnan(rho) else float(rho)


def _controls(here: pd.DataFrame, scores, draws, clusters, cfg) -> dict:
    """The top-K set against random feature sets and random directions."""
    boot = {"n_boot": cfg.n_boot, "seed": cfg.seed}
    comparisons = []
    if "zero:top_k" in here.index:
        for name in here[here["role"].isin(["random_set", "random_direction"])].index:
            comparisons.append(
                {
                    **compare(scores, "zero:top_k", name, clusters, **boot),
                    "control_role": here.loc[name, "role"],
                }
            )
    return {
        "top_k_set": _row(here, "zero:top_k"),
        "k": len(draws.candidates),
        "random_feature_sets": [
            effect_dict(r) for _, r in here[here["role"] == "random_set"].iterrows()
        ],
        "random_directions": [
            effect_dict(r) for _, r in here[here["role"] == "random_direction"].iterrows()
        ],
        "comparisons": comparisons,
    }


def _error_term(here: pd.DataFrame) -> dict:
    all_row, err_row = here.loc["zero:all"], here.loc["error:zero"]
    d_err, d_feat = float(err_row.delta_logprob), float(all_row.delta_logprob)
    return {
        "error_ablated": effect_dict(err_row),
        "all_features_ablated": effect_dict(all_row),
        "error_share": abs(d_err) / (abs(d_err) + abs(d_feat))
        if abs(d_err) + abs(d_feat) > 0
        else None,
    }


def _null_table(eff: pd.DataFrame) -> list[dict]:
    """The null distribution of |Δ| per mode/benchmark/endpoint: size, quantiles, threshold."""
    out = []
    null = eff[eff["role"] == "null"]
    for (mode, bench), d in null.groupby(["mode", "benchmark"]):
        for e in ENDPOINTS:
            v = d[f"delta_{e}"].abs().dropna()
            if len(v):
                thr = d[f"null_threshold_{e}"].dropna()
                out.append(
                    {
                        "mode": mode,
                        "benchmark": bench,
                        "endpoint": e,
                        "n": int(len(v)),
                        "median_abs": float(v.median()),
                        "max_abs": float(v.max()),
                        "threshold": float(thr.iloc[0]) if len(thr) else None,
                    }
                )
    return out


def circuit_summary(search, here: pd.DataFrame, scores, clusters, cfg, alive: int) -> dict:
    cm = cfg.circuit_mode
    share = len(search.features) / alive if alive else None
    out = {
        "fraction_target": search.fraction,
        "found": search.found,
        "n_features": len(search.features),
        "share_of_alive": share,
        "ablation_mode": cm,
        # Sparse: the circuit needs at most this share of the alive features
        # (causal.circuit_sparse_fraction).
        "sparse_fraction": cfg.circuit_sparse_fraction,
        "sparse": bool(share <= cfg.circuit_sparse_fraction)
        if search.found and share is not None
        else None,
        "search_split": "select",
        "search_delta_all": search.delta_all,
        "search_recovered": search.recovered,
        "estimate_size": search.estimate_size,
        "checked_sizes": {str(k): v for k, v in search.checked.items()},
    }
    if not search.found:
        return out
    rows = scores["clean"]["row"]
    d = {
        n: per_example_delta(scores, n).reindex(rows).to_numpy()
        for n in (
            "circuit:only",
            "circuit:ablated",
            "circuit:only+error",
            f"{cm}:all",
            f"{cm}:all+error",
        )
    }
    cl = clusters.reindex(rows).to_numpy()
    boot = {"n_boot": cfg.n_boot, "seed": cfg.seed}
    out.update(
        {
            "heldout_delta_all": float(here.loc[f"{cm}:all"].delta_logprob),
            "heldout_delta_all_and_error": float(here.loc[f"{cm}:all+error"].delta_logprob),
            "heldout_delta_circuit_ablated": effect_dict(here.loc["circuit:ablated"]),
            "heldout_delta_circuit_only": effect_dict(here.loc["circuit:only"]),
            "heldout_delta_circuit_only_error_ablated": effect_dict(here.loc["circuit:only+error"]),
            # Marks et al.'s default: the empty circuit ablates the error term too, and so does
            # the circuit alone (error nodes are not in it); M \ C keeps everything but C.
            "error_ablated": circuit_quality(
                d["circuit:only+error"], d["circuit:ablated"], d[f"{cm}:all+error"], cl, **boot
            ),
            "error_kept": circuit_quality(
                d["circuit:only"], d["circuit:ablated"], d[f"{cm}:all"], cl, **boot
            ),
        }
    )
    out["faithfulness"] = out["error_ablated"]["faithfulness"]
    out["completeness"] = out["error_ablated"]["completeness"]
    return out


def _per_benchmark(scores: pd.DataFrame) -> dict:
    out = {}
    for b, d in scores.groupby("benchmark"):
        out[b] = {
            "n": int(len(d)),
            "accuracy": float(d["correct"].mean()),
            "gold_logprob": float(d["gold_logprob"].mean()),
        }
        if "logit_diff" in d and d["logit_diff"].notna().any():
            out[b]["logit_diff"] = float(d["logit_diff"].mean())
    return out
