"""Section 3 of the report: one SAE's causal results, each claim beside the test behind it."""

from __future__ import annotations

import pandas as pd

from sae_reasoning.reporting.causal_methods import floor_line
from sae_reasoning.reporting.fmt import ci, fmt, md, p, yes


def dashboard_dir(model: str, hook: str) -> str:
    """Where the feature dashboards of one SAE live, relative to data/08_reporting/."""
    return f"features/{model}/{hook}"


def linker(model: str, hook: str):
    """feature id -> a markdown link to its dashboard page."""
    return lambda feat: f"[{int(feat)}]({dashboard_dir(model, hook)}/feature_{int(feat)}.html)"


def dashboards_line(model: str, hook: str) -> list[str]:
    return [
        "- feature dashboards: "
        f"[`{dashboard_dir(model, hook)}/index.html`]({dashboard_dir(model, hook)}/index.html) "
        "(one page per analysed feature; every feature id below links to its page)"
    ]


def candidates_table(ranking: list[dict], token_injection: dict, link=str) -> list[str]:
    L = [
        "Candidates (zero ablation, each alone; pooled over the analysed benchmarks; metric: Δ "
        "gold log-prob "
        "unless the column says otherwise):",
        "",
        "| rank | feature | Δ gold log-prob [95% CI] | q | null threshold | important | Δ "
        "accuracy [95% CI] | q (McNemar) | Δ logit diff | token-driven (survival) | attribution "
        "estimate | firing rate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ranking:
        tok = token_injection.get(str(r["feature"]), {})
        surv = f" ({tok['survival']:.2f})" if tok.get("survival") is not None else ""
        L.append(
            f"| {r['rank']} | {link(r['feature'])} | {ci(r, 'delta_logprob')} | "
            f"{p(r.get('q_logprob'))} | "
            f"{fmt(r.get('null_threshold_logprob'))} | {yes(r.get('important'))} | "
            f"{ci(r, 'delta_accuracy', pct=True)} | {p(r.get('q_accuracy'))} | "
            f"{fmt(r.get('delta_logit_diff'))} | {yes(tok.get('token_driven'))}{surv} | "
            f"{r['attribution_estimate']:+.3f} | {r['firing_rate']:.3f} |"
        )
    return L


def per_benchmark_table(
    eff: pd.DataFrame, ranks: dict[int, int], boot: dict, link=str
) -> list[str]:
    """Δ gold log-prob [95% CI] per benchmark of every feature ablated alone (zero ablation):
    candidates in rank order, then the random controls; bold where called important there."""
    eff = eff[(eff["mode"] == "zero") & eff["role"].isin(["candidate", "control"])]
    benches = sorted(b for b in eff["benchmark"].unique() if b != "all")
    if eff.empty or not benches:
        return []
    cells = {(int(r["feature"]), r["role"], r["benchmark"]): r for r in eff.to_dict("records")}
    n = eff[eff["benchmark"].isin(benches)].groupby("benchmark")[["n", "n_clusters"]].max()
    head = [f"{b} (n {n.loc[b, 'n']}, {n.loc[b, 'n_clusters']} clusters)" for b in benches]
    how = f"{boot['n_boot']} resamples; " if boot.get("n_boot") else ""
    L = [
        "",
        "Per benchmark (zero ablation, each feature alone, held-out examples; metric: Δ gold "
        "log-prob; "
        "[95% CI]: paired cluster bootstrap, "
        f"{how}{boot.get('procedure', 'causal/stats.py bootstrap_ci')}; "
        "**bold**: important on that benchmark, q < α and |Δ| above its null threshold):",
        "",
        "| feature | rank | pooled Δ [95% CI] | " + " | ".join(head) + " |",
        "|---|---|---|" + "---|" * len(benches),
    ]
    cand = sorted(
        {f for f, role, _ in cells if role == "candidate"},
        key=lambda f: ranks.get(f, len(ranks) + 1),
    )
    # controls as in the plot: by pooled Δ
    ctrl = sorted(
        {f for f, role, _ in cells if role == "control"},
        key=lambda f: (cells.get((f, "control", "all")) or {}).get("delta_logprob", 0.0),
    )
    for role, feats in (("candidate", cand), ("control", ctrl)):
        for f in feats:
            row = [_cell(cells.get((f, role, b))) for b in ("all", *benches)]
            rank = ranks.get(f, "n/a") if role == "candidate" else "random control"
            L.append(f"| {link(f)} | {rank} | " + " | ".join(row) + " |")
    return L


def _cell(r: dict | None) -> str:
    if r is None:
        return "n/a"
    text = ci(r, "delta_logprob")
    return f"**{text}**" if r.get("important_logprob") is True else text


def significance_lines(s: dict) -> list[str]:
    g = s.get("significance") or {}
    if not g:
        return []
    cand, ctrl = g.get("candidates", {}), g.get("controls", {})
    cost = g.get("cost", {})
    L = [
        "",
        f"- Significance: {g['family']}; α = {g['alpha']}; modes {', '.join(g['modes'])}.",
        f"- Null: {g['n_null_features']} random live features, threshold = their "
        f"{g['null_quantile']:.0%} "
        "quantile of |Δ| (per mode, benchmark, endpoint); its cost here "
        f"{fmt(cost.get('null_seconds'))} s "
        f"of {fmt(cost.get('ablation_seconds'))} s of exact ablation "
        f"({fmt(cost.get('seconds_per_condition'))} s per condition).",
    ]
    if g.get("null_too_small"):
        L.append(
            "- Note: the null has fewer features than a reliable estimate of that quantile needs."
        )
    L.append(
        f"- Candidates: {cand.get('tested', 0)} tested, {cand.get('significant', 0)} "
        "significant, "
        f"**{cand.get('important', 0)} important**. Random controls through the same "
        "procedure: "
        f"{ctrl.get('tested', 0)} tested, {ctrl.get('significant', 0)} significant, "
        f"**{ctrl.get('important', 0)} called important (false positives)**."
    )
    single = len(s.get("benchmarks", [])) == 1
    null = [r for r in g.get("null", []) if (r["benchmark"] != "all") == single]
    if null:
        L += [
            "",
            "Null of random live features (|Δ| per ablation):",
            "",
            "| mode | benchmark | endpoint | n | median |Δ| | max |Δ| | threshold |",
            "|---|---|---|---|---|---|---|",
        ]
        L += [
            f"| {r['mode']} | {r['benchmark']} | {r['endpoint']} | {r['n']} | "
            f"{r['median_abs']:.3g} | "
            f"{r['max_abs']:.3g} | {fmt(r['threshold'])} |"
            for r in null
        ]
    return L


def controls_lines(s: dict) -> list[str]:
    c = s.get("controls")
    if not c:
        return []
    L = [
        "",
        "Controls (zero ablation on held-out examples; metric: Δ gold log-prob and Δ accuracy):",
        "",
        "| condition | Δ gold log-prob [95% CI] | Δ accuracy [95% CI] | p (sign-flip) | p "
        "(McNemar) |",
        "|---|---|---|---|---|",
    ]
    rows = []
    if c.get("top_k_set"):
        rows.append((f"top-{c['k']} features together", c["top_k_set"]))
    rows += [
        (f"{c['k']} random live features, draw {j + 1}", r)
        for j, r in enumerate(c["random_feature_sets"])
    ]
    rows += [
        (f"norm-matched random direction {j + 1}", r) for j, r in enumerate(c["random_directions"])
    ]
    rows.append(("all features", s["all_features_zero"]))
    e = s.get("error_term", {})
    if e.get("error_ablated"):
        rows.append(("SAE error term", e["error_ablated"]))
    for name, r in rows:
        L.append(
            f"| {name} | {ci(r, 'delta_logprob')} | {ci(r, 'delta_accuracy', pct=True)} | "
            f"{p(r.get('p_logprob'))} | {p(r.get('p_accuracy'))} |"
        )
    if c.get("comparisons"):
        L += [
            "",
            f"Is the top-{c['k']} set stronger than its controls? Paired Δ(top-K) − "
            "Δ(control) in gold "
            "log-prob on the same held-out examples:",
            "",
            "| control | Δ(top-K) − Δ(control) [95% CI] | p (sign-flip) | top-K stronger |",
            "|---|---|---|---|",
        ]
        for x in c["comparisons"]:
            stronger = x["hi"] < 0 and x["p"] < 0.05
            L.append(
                f"| {x['b']} | {x['diff']:+.3f} [{x['lo']:+.3f}, {x['hi']:+.3f}] | "
                f"{p(x['p'])} | "
                f"{yes(stronger)} |"
            )
    if e.get("error_share") is not None:
        L += [
            "",
            f"- share of the effect carried by the SAE error term: {e['error_share']:.1%} "
            "(|Δ error ablated| / (|Δ error ablated| + |Δ all features ablated|))",
        ]
    return L


def _quality(q: dict) -> str:
    if q.get("withheld"):
        return q["withheld"]
    f, c = q["faithfulness_ci"], q["completeness_ci"]
    return (
        f"faithfulness {q['faithfulness']:.3f} [{f[0]:.3f}, {f[1]:.3f}], completeness "
        f"{q['completeness']:.3f} "
        f"[{c[0]:.3f}, {c[1]:.3f}]"
    )


def circuit_lines(circ: dict | None) -> list[str]:
    if not circ:
        return []
    if not circ.get("found"):
        return [
            "- circuit: none (ablating the whole SAE did not lower the gold log-prob on the "
            "select split)"
        ]
    share = circ.get("share_of_alive")
    L = [
        f"- circuit ({circ.get('ablation_mode', 'zero')} ablation): {circ['n_features']} features "
        f"({fmt(share, pct=True)} of alive features{sparsity(circ)}) recover "
        f"{circ['search_recovered']:.0%} of the whole-SAE effect "
        f"on the select split (target {circ['fraction_target']:.0%}; the linear attribution "
        "estimate predicted "
        f"{fmt(circ['estimate_size'])}). Graph: `<model>/circuit.json`."
    ]
    if "error_ablated" in circ:
        L += [
            "  - held out, Marks et al.'s default (the empty circuit and the circuit alone "
            "ablate the SAE error "
            f"term too): {_quality(circ['error_ablated'])} (bootstrap 95% CIs; 1 and 0 are ideal)",
            f"  - held out, error term kept everywhere: {_quality(circ['error_kept'])}",
        ]
    return L


def sparsity(circ: dict) -> str:
    """'; not sparse: above 2.0% ...' against causal.circuit_sparse_fraction (empty without a
    verdict)."""
    limit, sparse = circ.get("sparse_fraction"), circ.get("sparse")
    if limit is None or sparse is None:
        return ""
    if sparse:
        return f"; sparse: at most {limit:.1%}, `causal.circuit_sparse_fraction`"
    return f"; **not sparse**: above {limit:.1%}, `causal.circuit_sparse_fraction`"


def token_injection_lines(ti: dict, link=str) -> list[str]:
    if not ti:
        return []
    L = [
        "",
        "Token-driven or reasoning? Each feature's top tokens injected into neutral, "
        "non-reasoning text "
        "(arXiv 2601.05679); survival = activation there / activation at its top benchmark "
        "contexts; "
        "token-driven when survival reaches the threshold:",
        "",
        "| feature | tokens | benchmark activation | injected activation | neutral baseline | "
        "survival | token-driven |",
        "|---|---|---|---|---|---|---|",
    ]
    for feat, t in ti.items():
        toks = ", ".join(md(repr(x)) for x in t.get("tokens", []))
        L.append(
            f"| {link(feat)} | {toks} | {fmt(t.get('benchmark_activation'))} | "
            f"{fmt(t.get('injected_activation'))} | "
            f"{fmt(t.get('neutral_baseline'))} | {fmt(t.get('survival'))} | "
            f"{yes(t.get('token_driven'))} |"
        )
    return L


def contexts_lines(contexts: dict, link=str) -> list[str]:
    if not contexts:
        return []
    L = [
        "",
        "Top-activating contexts (benchmark tokens where each feature fires most; the token "
        "in ⟦ ⟧):",
        "",
        "| feature | activation | context |",
        "|---|---|---|",
    ]
    for feat, entries in list(contexts.items())[:6]:
        for ent in entries[:3]:
            L.append(f"| {link(feat)} | {ent['activation']:.2f} | {md(ent['text'])} |")
    return L


def hook_section(
    model: str,
    hook: str,
    s: dict,
    ranking: list[dict],
    contexts: dict,
    effects: pd.DataFrame | None = None,
) -> list[str]:
    """One SAE's causal results; effects: its rows of <model>.feature_effects (per-benchmark
    table)."""
    link = linker(model, hook)
    L = [
        f"### `{model}` `{hook}` (d_sae {s['d_sae']}, {s['alive_features']} alive, "
        f"{s.get('active_at_ablated_positions', 'n/a')} firing where ablations act; "
        f"{s['n_select_examples']} select / {s['n_heldout_examples']} held-out examples, "
        f"{s.get('n_heldout_clusters', 'n/a')} held-out clusters; examples: "
        f"{s.get('examples', 'all')})",
        "",
        "| benchmark | n (held out) | clean accuracy | clean gold log-prob | clean logit diff |",
        "|---|---|---|---|---|",
    ]
    for b, c in s["clean"].items():
        L.append(
            f"| {b} | {c['n']} | {c['accuracy']:.1%} | {c['gold_logprob']:.3f} | "
            f"{fmt(c.get('logit_diff'))} |"
        )
    a = s["all_features_zero"]
    L += [
        "",
        f"- ablations act at: {where(s)}",
        f"- splice identity: max |Δ gold log-prob| with the SAE spliced in and nothing ablated = "
        f"{s['splice_identity_max_abs_logprob_change']:.2e}",
        *floor_line(s.get("numerical_floor")),
        f"- all features zero-ablated: Δ accuracy {a['delta_accuracy']:+.1%}, Δ gold log-prob "
        f"{a['delta_logprob']:+.3f}, KL {a['kl']:.3f}",
        f"- Spearman correlation, attribution estimate vs exact effect over the candidates: "
        f"{fmt(s['spearman_attribution_vs_exact'])}",
        *dashboards_line(model, hook),
        "",
    ]
    L += candidates_table(ranking, s.get("token_injection", {}), link)
    if effects is not None and len(effects):
        L += per_benchmark_table(
            effects, {r["feature"]: r["rank"] for r in ranking}, s.get("bootstrap", {}), link
        )
    L += significance_lines(s)
    L += controls_lines(s)
    L += circuit_lines(s.get("circuit"))
    L += token_injection_lines(s.get("token_injection", {}), link)
    L += contexts_lines(contexts, link)
    return L + [""]


def where(s: dict) -> str:
    if s.get("positions", "answer") == "answer":
        return "the answer positions (the last prompt token and the answer tokens)"
    return "every position (few-shot block, question, answer)" + (
        " except position 0, the attention sink left out of SAE training"
        if s.get("first_position_exempt")
        else ""
    )


def selection_lines(model: str, sel: dict) -> list[str]:
    """Which benchmarks the causal stage analysed for a model, and why the others were skipped."""
    if not sel:
        return []
    L = [
        f"- `{model}`: analysed {', '.join(sel.get('analysed', [])) or 'nothing'} "
        f"(examples: {sel.get('examples', 'all')}; require above chance: "
        f"{sel.get('require_above_chance')})."
    ]
    for b, why in (sel.get("skipped") or {}).items():
        L.append(f"  - skipped {b}: {why}")
    return L
