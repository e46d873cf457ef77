"""PHASE4_REPORT.md and its JSON files, from the saved results of every model namespace.

Every number in the report comes from one of: <model>.baseline_scores,
<model>.sae_metrics, <model>.activations (manifests), <model>.feature_effects,
<model>.feature_ranking, <model>.causal_summary, <model>.feature_contexts (circuits: the
circuit section of causal_summary; the graphs themselves are <model>.circuit).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd


def _fmt(x, pct=False, digits=3):
    if x is None or (isinstance(x, float) and pd.isna(x)):
        return "n/a"
    return f"{x:.1%}" if pct else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def activation_summary(activations) -> dict:
    out = {}
    for bench, per_hook in activations.stores.items():
        for hook, store in per_hook.items():
            m = store.manifest
            out.setdefault(hook, {})[bench] = {
                "n_tokens": m["n_tokens"], "d_model": m["d_model"], "dtype": m["dtype"],
                "median_norm": m.get("norm_stats", {}).get("median"),
                "shared_block": m.get("shared_block"),
            }
    return out


def build(models: dict[str, dict]) -> dict:
    """models: namespace -> {baseline, sae_metrics, activations, effects, ranking, summary, contexts}."""
    baseline = pd.concat([m["baseline"].assign(model=ns) for ns, m in models.items()], ignore_index=True)
    effects = pd.concat([m["effects"].assign(model=ns) for ns, m in models.items()], ignore_index=True)
    training = {ns: {"activations": activation_summary(m["activations"]), "sae_metrics": m["sae_metrics"]}
                for ns, m in models.items()}
    causal = {ns: m["summary"]["hook_points"] for ns, m in models.items()}
    ranking = {ns: m["ranking"]["hook_points"] for ns, m in models.items()}
    contexts = {ns: (m.get("contexts") or {}).get("hook_points", {}) for ns, m in models.items()}
    return {"baseline": baseline, "effects": effects, "training_summary": training,
            "causal_test_results": causal, "feature_importance_ranking": ranking,
            "top_activating_contexts": contexts,
            "markdown": markdown(baseline, training, causal, ranking, contexts)}


def planted_dictionary(training: dict) -> dict | None:
    """The planted-dictionary check of the first SAE that has one (same settings, same result)."""
    for t in training.values():
        metrics = t["sae_metrics"] or {}
        for m in (metrics.get("hook_points", metrics) or {}).values():
            if isinstance(m, dict) and isinstance(m.get("planted_dictionary"), dict):
                return m["planted_dictionary"]
    return None


def _ci(r: dict, key: str, pct=False) -> str:
    """'-0.123 [-0.2, -0.05]' from an effect dict with key, key_lo, key_hi (or key_ci)."""
    lo, hi = r.get(f"{key}_ci") or (r.get(f"{key}_lo"), r.get(f"{key}_hi"))
    v = r.get(key)
    if v is None:
        return "n/a"
    if pct:
        return f"{v:+.1%} [{lo:+.1%}, {hi:+.1%}]" if lo is not None else f"{v:+.1%}"
    return f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]" if lo is not None else f"{v:+.3f}"


def _p(x) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{x:.2g}"


def _md(text: str) -> str:
    # One table cell: line breaks shown, pipes escaped.
    return text.replace("\n", "↵").replace("|", "\\|")


def _where(s: dict) -> str:
    if s.get("positions", "answer") == "answer":
        return "the answer positions (the last prompt token and the answer tokens)"
    return ("every position (few-shot block, question, answer)"
            + (" except position 0, the attention sink left out of SAE training" if s.get("first_position_exempt") else ""))


def causal_details(s: dict, contexts: dict) -> list[str]:
    """Controls, error term, circuit and top-activating contexts of one SAE."""
    L = []
    c = s.get("controls")
    if c:
        L += ["", f"Controls (zero ablation on held-out examples; Δ gold log-prob and Δ accuracy with paired "
              f"bootstrap 95% CIs):", "",
              "| condition | Δ gold log-prob [95% CI] | Δ accuracy [95% CI] | p (sign-flip) | p (McNemar) |",
              "|---|---|---|---|---|"]
        rows = []
        if c.get("top_k_set"):
            rows.append((f"top-{c['k']} features together", c["top_k_set"]))
        rows += [(f"{c['k']} random live features, draw {j + 1}", r) for j, r in enumerate(c["random_feature_sets"])]
        rows += [(f"norm-matched random direction {j + 1}", r) for j, r in enumerate(c["random_directions"])]
        rows.append(("all features", s["all_features_zero"]))
        e = s.get("error_term", {})
        if e.get("error_ablated"):
            rows.append(("SAE error term", e["error_ablated"]))
        for name, r in rows:
            L.append(f"| {name} | {_ci(r, 'delta_logprob')} | {_ci(r, 'delta_accuracy', pct=True)} | "
                     f"{_p(r.get('p_logprob'))} | {_p(r.get('p_accuracy'))} |")
        if e.get("error_share") is not None:
            L += ["", f"- share of the effect carried by the SAE error term: {e['error_share']:.1%} "
                  "(|Δ error ablated| / (|Δ error ablated| + |Δ all features ablated|))"]
    sig = s.get("significant_features_q05")
    if sig:
        L.append(f"- features with q < 0.05 (Benjamini-Hochberg over the {s['features_tested']} single features "
                 f"tested): {sig['logprob']} on gold log-prob, {sig['accuracy']} on accuracy (McNemar)")
    circ = s.get("circuit")
    if circ:
        if circ.get("found"):
            L.append(f"- circuit ({circ.get('ablation_mode', 'zero')} ablation): {circ['n_features']} features "
                     f"recover {circ['search_recovered']:.0%} of the "
                     f"whole-SAE effect on the select split (target {circ['fraction_target']:.0%}; the linear "
                     f"attribution estimate predicted {_fmt(circ['estimate_size'])}); on held-out examples "
                     f"faithfulness {_fmt(circ['faithfulness'])}, completeness {_fmt(circ['completeness'])} "
                     "(Marks et al.: 1 and 0 are ideal). Graph: `<model>/circuit.json`.")
        else:
            L.append("- circuit: none (ablating the whole SAE did not lower the gold log-prob on the select split)")
    if contexts:
        L += ["", "Top-activating contexts (benchmark tokens where each feature fires most; the token in ⟦ ⟧):", "",
              "| feature | activation | context |", "|---|---|---|"]
        for feat, entries in list(contexts.items())[:6]:
            for ent in entries[:3]:
                L.append(f"| {feat} | {ent['activation']:.2f} | {_md(ent['text'])} |")
    return L


def markdown(baseline: pd.DataFrame, training: dict, causal: dict, ranking: dict, contexts: dict | None = None) -> str:
    contexts = contexts or {}
    L = [f"# Phase 4 report: SAE features that models use to answer reasoning problems",
         "", f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}. Models: "
         + ", ".join(f"`{m}`" for m in training) + ".", ""]
    L += ["## 1. Baseline: does the model solve the benchmarks?", "",
          "Accuracy = greedy decoding reproduces the gold answer exactly (open answers) or the gold "
          "choice has the highest log-probability (multiple choice). Chance = 1/#choices for choice "
          "questions, 0 for open answers. Gold log-prob = summed log-probability of the gold answer "
          "tokens (teacher-forced), mean over examples. All examples of the prompts table.", "",
          "| model | benchmark | n | accuracy | chance | above chance | gold log-prob | model's own answer = gold |",
          "|---|---|---|---|---|---|---|---|"]
    for (model, bench), d in baseline.groupby(["model", "benchmark"]):
        acc, chance = d.correct.mean(), d.chance.mean()
        own = d.generated_correct.mean() if "generated_correct" in d else None
        L.append(f"| {model} | {bench} | {len(d)} | {acc:.1%} | {chance:.1%} | {'yes' if acc > chance else 'no'}"
                 f" (+{acc - chance:.1%}) | {d.gold_logprob.mean():.2f} | {_fmt(own, pct=True)} |")
    L += ["", "![baseline accuracy](baseline_accuracy.png)", ""]
    L += ["## 2. Activations and SAEs", ""]
    for model, t in training.items():
        for hook, per_bench in t["activations"].items():
            toks = sum(v["n_tokens"] for v in per_bench.values())
            parts = ", ".join(f"{b} {v['n_tokens']:,}" for b, v in per_bench.items())
            L.append(f"- `{model}` `{hook}`: {toks:,} captured tokens ({parts}).")
            for b, v in per_bench.items():
                sb = v.get("shared_block")
                if sb and sb.get("first_position_ratio_to_captured_median"):
                    L.append(f"  - {b}: residual norm at the first position {sb['first_position_norm']:.0f}, "
                             f"{sb['first_position_ratio_to_captured_median']:.0f}x the median of captured tokens "
                             f"({v['median_norm']:.1f}): massive activation, excluded from SAE training by rule.")
                    break
        metrics = t["sae_metrics"] or {}
        for hook, m in (metrics.get("hook_points", metrics) or {}).items():
            if not isinstance(m, dict):
                continue
            keys = [k for k in ("n_tokens", "mse", "fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction") if k in m]
            L.append(f"- SAE `{model}` `{hook}` on held-out tokens: " + ", ".join(f"{k} {_fmt(m[k])}" for k in keys) + ".")
            sp = m.get("spliced")
            if isinstance(sp, dict) and "ce_loss_score" in sp:
                L.append(f"  - spliced into the model (reconstruction in place of the residual, no error term) on "
                         f"{sp['n_prompts']} held-out prompts ({sp['n_predicted_tokens']:,} predicted tokens): CE loss "
                         f"recovered {_fmt(sp['ce_loss_score'])} (CE clean {sp['ce_loss_without_sae']:.3f}, with SAE "
                         f"{sp['ce_loss_with_sae']:.3f}, residual zero-ablated {sp['ce_loss_with_ablation']:.3f}); "
                         f"KL to the clean model {sp['kl_div_with_sae']:.3f} (zero-ablated {sp['kl_div_with_ablation']:.3f}).")
    L += ["", f"Training curves: `<model>_sae_training_curve.png`.", ""]
    L += ["## 3. Causal effects of SAE features", "",
          "The SAE is spliced in at its layer with its error term kept, so the model is unchanged "
          "until a feature is touched (checked: `splice identity` below). Features are ranked by "
          "attribution patching on the `select` split; the top candidates, random live features "
          "(control), and all features at once are then ablated exactly on the `heldout` split, at "
          "the positions stated per hook point. Δ = ablated − clean, mean over held-out examples; [95% CI] = paired "
          "bootstrap over examples; p = sign-flip permutation test (log-prob) or McNemar's exact test "
          "(accuracy); q = Benjamini-Hochberg across all single features tested.", ""]
    for model, per_hook in causal.items():
        for hook, s in per_hook.items():
            L += [f"### `{model}` `{hook}` (d_sae {s['d_sae']}, {s['alive_features']} alive; "
                  f"{s['n_select_examples']} select / {s['n_heldout_examples']} held-out examples)", "",
                  "| benchmark | n | clean accuracy | chance |", "|---|---|---|---|"]
            for b, c in s["clean"].items():
                L.append(f"| {b} | {c['n']} | {c['accuracy']:.1%} | {c['chance']:.1%} |")
            a = s["all_features_zero"]
            L += ["", f"- ablations act at: {_where(s)}",
                  f"- splice identity: max |Δ gold log-prob| with the SAE spliced in and nothing ablated = "
                  f"{s['splice_identity_max_abs_logprob_change']:.2e}",
                  f"- all features zero-ablated: Δ accuracy {a['delta_accuracy']:+.1%}, Δ gold log-prob "
                  f"{a['delta_logprob']:+.3f}, KL {a['kl']:.3f}",
                  f"- top-{len(ranking[model][hook])} features, mean Δ gold log-prob (zero ablation, each alone): "
                  f"{_fmt(s['top_feature_mean_delta_logprob'])}; random live features: "
                  f"{_fmt(s['random_control_mean_delta_logprob'])}",
                  f"- Spearman correlation, attribution estimate vs exact effect over the candidates: "
                  f"{_fmt(s['spearman_attribution_vs_exact'])}", "",
                  "| rank | feature | Δ gold log-prob [95% CI] | q | Δ accuracy [95% CI] | q (McNemar) | KL | "
                  "attribution estimate | firing rate |",
                  "|---|---|---|---|---|---|---|---|---|"]
            for r in ranking[model][hook][:10]:
                L.append(f"| {r['rank']} | {r['feature']} | {_ci(r, 'delta_logprob')} | {_p(r.get('q_logprob'))} | "
                         f"{_ci(r, 'delta_accuracy', pct=True)} | {_p(r.get('q_accuracy'))} | "
                         f"{r['kl']:.3f} | {r['attribution_estimate']:+.3f} | {r['firing_rate']:.3f} |")
            L += causal_details(s, contexts.get(model, {}).get(hook, {}))
            L.append("")
    L += ["![feature effects](feature_effects.png)", ""]
    if len(causal) > 1:
        L += ["## 4. Across models", "", "| model | hook point | all-features Δ log-prob | top-feature mean Δ | control mean Δ |",
              "|---|---|---|---|---|"]
        for model, per_hook in causal.items():
            for hook, s in per_hook.items():
                L.append(f"| {model} | {hook} | {s['all_features_zero']['delta_logprob']:+.3f} | "
                         f"{_fmt(s['top_feature_mean_delta_logprob'])} | {_fmt(s['random_control_mean_delta_logprob'])} |")
        L.append("")
    planted = planted_dictionary(training)
    if planted:
        d, sae = planted["data"], planted["sae"]
        L += ["## Methods: does the trainer find known features?", "",
              f"Synthetic activations from a planted sparse dictionary: {d['n_features']} unit directions in "
              f"d_in {d['d_in']}, {d['active_per_token']} active per token with coefficients {d['coefficients']}, "
              f"noise std {d['noise_std']}, {d['n_tokens']:,} tokens. The trainer with this run's settings "
              f"({sae['architecture']}, d_sae {sae['d_sae']}, {sae['steps']} steps) recovered "
              f"**{planted['fraction_recovered']:.1%}** of the planted directions at cosine >= "
              f"{planted['cosine_threshold']} (mean best cosine {planted['mean_best_cosine']:.3f}; target "
              f"{planted['target']}: {'met' if planted['passed'] else 'NOT met'}).", "",
              "![planted dictionary recovery](planted_dictionary.png)", ""]
    L += ["## Sources", "", "Baseline: `data/07_model_output/<model>/baseline_scores.parquet`; SAE metrics: "
          "`<model>/sae_metrics.json`; effects: `<model>/feature_effects.parquet`; ranking: "
          "`feature_importance_ranking.json`; causal summary: `causal_test_results.json`; circuits: "
          "`data/07_model_output/<model>/circuit.json` (networkx node-link); contexts: "
          "`top_activating_contexts.json`; activations: "
          "`data/04_feature/activations/<model>/<benchmark>/<hook point>/manifest.json`.", ""]
    return "\n".join(L)
