"""Report section: linear probes beside the ablations (from `<model>.probe_results`, probes.py)."""

from __future__ import annotations

from sae_reasoning.reporting.fmt import fmt, p, yes

METHODS = [
    "Logistic-regression probes read the residual at the answer position (the last prompt token, "
    "from the capture store) at each SAE's hook point: on the residual itself (standardised, L2 "
    "penalty) and on the SAE codes there (standardised, L1 penalty: the sparse probe). Targets: "
    "`correct` (the clean model answers correctly; on the benchmarks the causal stage analysed, "
    "pooled as its ranking is) and `benchmark`. C is chosen by cross-validated log loss on the "
    "`select` split only (templates kept in one fold); accuracy is measured on `heldout`, against "
    "the majority class of the select labels. [95% CI]: bootstrap over held-out examples, "
    "resampling whole templates. Test: McNemar's exact test on the examples where probe and "
    "majority disagree (the cluster sign-flip test of the per-example gain where templates group "
    "examples), two-sided; beats majority = gain > 0 and p < α.",
    "",
    "The sparse `correct` probe's top features by |weight| are compared with the causal ranking "
    "(features ranked by exact Δ gold log-prob under zero ablation): top-k overlap with its "
    "hypergeometric p against a random draw from the features live at the answer position (select "
    "split) plus those tested, and Spearman's ρ over the features the causal stage tested (probe "
    "|weight|, 0 where it gives none, vs −Δ). Findings: *predicts, does not matter causally* (in "
    "the probe's top-k, tested, not important) and *matters, not linearly predictive* (important, "
    "zero probe weight); probe features never ablated exactly are listed as untested, not as "
    "findings. An L1 probe zeroes a feature that adds nothing given the others, so each named "
    "feature also shows its held-out AUC alone (Mann-Whitney p); an important zero-weight feature "
    "that is predictive alone (p < α) is listed as *matters, redundant for the probe* instead.",
]


def _interval(r: dict, key: str) -> str:
    lo, hi = r.get(f"{key}_ci") or (None, None)
    v = r.get(key)
    if v is None:
        return "n/a"
    sign = "+" if key == "gain" else ""
    return f"{v:{sign}.1%} [{lo:{sign}.1%}, {hi:{sign}.1%}]" if lo is not None else f"{v:{sign}.1%}"


def probe_rows(model: str, hook: str, h: dict) -> list[str]:
    L = []
    for target, t in h.get("targets", {}).items():
        for rep in ("residual", "sae_codes"):
            r = t.get(rep) or {}
            name = rep
            if rep != "residual":
                live = t[rep].get("n_live_features")
                name = f"SAE codes (L1, {r.get('n_nonzero', 0)} of {live} live weighted)"
            head = f"| {model} | {hook} | {target} ({t['n_examples']} ex.) | {name} |"
            if "skipped" in r:
                L.append(f"{head} skipped: {r['skipped']} |" + " |" * 6)
                continue
            L.append(
                f"{head} {r['n_select']} / {r['n_heldout']} | {fmt(r['cv']['C'])} | "
                f"{_interval(r, 'accuracy')} | "
                f"{_interval(r, 'majority_accuracy')} | {_interval(r, 'gain')} | {p(r['p'])} "
                "| "
                f"{yes(r['beats_majority'])} |"
            )
    return L


def _alone(f: dict) -> str:
    return (
        f"AUC alone {f['auc_alone']:.2f}, p {p(f['p_auc'])}"
        if f.get("auc_alone") is not None
        else "AUC alone n/a"
    )


def _feature(f: dict) -> str:
    lo, hi = f.get("delta_logprob_ci") or (None, None)
    ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None else ""
    w = f"probe weight {f['probe_weight']:+.3g}" if f["probe_weight"] else "zero probe weight"
    return (
        f"feature {f['feature']} ({w}, {_alone(f)}; causal rank {f['causal_rank']}, "
        f"Δ gold log-prob {f['delta_logprob']:+.3f}{ci})"
    )


def overlap_lines(model: str, hook: str, o: dict) -> list[str]:
    if "skipped" in o:
        return [
            f"- `{model}` `{hook}`: sparse probe vs causal ranking not compared: {o['skipped']}."
        ]
    t, rc = o["top_k_overlap"], o["rank_correlation"]
    rho = (
        f"Spearman ρ {rc['spearman']:+.2f} (p {p(rc['p'])}) over the {rc['n']} features the "
        "causal stage tested"
        if rc.get("spearman") is not None
        else f"Spearman ρ n/a ({rc.get('note')})"
    )
    L = [
        f"- `{model}` `{hook}`: the sparse `correct` probe's top {t['k_probe']} and the causal "
        f"top {t['k_causal']} "
        f"share **{t['overlap']}** "
        f"feature(s){' (' + ', '.join(map(str, t['features'])) + ')' if t['features'] else ''}; "
        f"{fmt(t['expected_at_random'])} expected at random among {t['population']} features "
        f"(hypergeometric p {p(t['p_hypergeometric'])}). {rho}."
    ]
    named = [
        ("Predicts, does not matter causally", o["predicts_not_causal"]),
        ("Matters, not linearly predictive", o["causal_not_predictive"]),
        ("Matters, predictive alone but redundant for the probe", o.get("causal_redundant", [])),
        ("Both predictive and important", o["both"]),
    ]
    for title, items in named:
        if items:
            L.append(f"  - **{title}**: " + "; ".join(_feature(f) for f in items) + ".")
    if o["untested"]:
        L.append(
            "  - Untested (in the probe's top-k, never ablated exactly; no finding): "
            + ", ".join(
                f"{u['feature']} (weight {u['probe_weight']:+.3g}, {_alone(u)})"
                for u in o["untested"]
            )
            + "."
        )
    if not any(items for _, items in named):
        L.append(
            "  - No feature is named: no tested feature is in the probe's top-k and none is "
            "important."
        )
    return L


def probes_section(probes: dict[str, dict | None]) -> list[str]:
    """probes: model -> its probe_results (None or {} where the namespace has none)."""
    have = {m: r for m, r in probes.items() if r and r.get("hook_points")}
    if not have:
        return []
    L = [
        "## Linear probes beside the ablations",
        "",
        *METHODS,
        "",
        "| model | hook point | target | representation | n select / heldout | C | accuracy [95% "
        "CI] | majority [95% CI] | gain [95% CI] | p | beats majority |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, r in have.items():
        for hook, h in r["hook_points"].items():
            L += probe_rows(model, hook, h)
    L.append("")
    for model, r in have.items():
        for hook, h in r["hook_points"].items():
            if h.get("n_over_norm_rule"):
                L.append(
                    f"- `{model}` `{hook}`: {h['n_over_norm_rule']} answer-position row(s) "
                    "exceed the "
                    "massive-activation norm rule (kept; the SAE is off-distribution there)."
                )
            if "overlap" in h:
                L += overlap_lines(model, hook, h["overlap"])
    return L + [""]
