"""PHASE4_REPORT.md and its JSON files, from the saved results of every model namespace.

Every number in the report comes from one of: <model>.baseline_scores,
<model>.sae_metrics, <model>.activations (manifests), <model>.feature_effects,
<model>.feature_ranking, <model>.causal_summary, <model>.feature_contexts, <model>.probe_results (circuits: the
circuit section of causal_summary; the graphs themselves are <model>.circuit).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from sae_reasoning.chance import CHANCE_RULE, baseline_vs_chance
from sae_reasoning.reporting.causal_section import METHODS, hook_section, selection_lines
from sae_reasoning.reporting.probes_section import probes_section
from sae_reasoning.reporting.fmt import fmt as _fmt, md
from sae_reasoning.reporting.resources_section import section as resources_section, summarise as summarise_resources


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


def build(models: dict[str, dict], prompts: pd.DataFrame, missing: list[str] = (),
          resources: pd.DataFrame | None = None) -> dict:
    """models: namespace -> {baseline, sae_metrics, activations, effects, ranking, summary, contexts};
    prompts: the prompts table every model was scored on (for the chance baselines);
    resources: the resource ledger's records (datasets.ledger)."""
    resources = summarise_resources(resources if resources is not None else [])
    baseline = pd.concat([m["baseline"].assign(model=ns) for ns, m in models.items()], ignore_index=True)
    effects = pd.concat([m["effects"].assign(model=ns) for ns, m in models.items() if len(m["effects"])],
                        ignore_index=True) if any(len(m["effects"]) for m in models.values()) else pd.DataFrame()
    chance = {ns: baseline_vs_chance(m["baseline"], prompts) for ns, m in models.items()}
    selection = {ns: m["summary"].get("selection", {}) for ns, m in models.items()}
    training = {ns: {"activations": activation_summary(m["activations"]), "sae_metrics": m["sae_metrics"]}
                for ns, m in models.items()}
    causal = {ns: {"selection": selection[ns], "baseline_vs_chance": chance[ns], "hook_points": m["summary"]["hook_points"],
                   "probes": m.get("probes")} for ns, m in models.items()}
    ranking = {ns: m["ranking"]["hook_points"] for ns, m in models.items()}
    contexts = {ns: (m.get("contexts") or {}).get("hook_points", {}) for ns, m in models.items()}
    return {"baseline": baseline, "effects": effects, "baseline_vs_chance": chance, "training_summary": training,
            "causal_test_results": causal, "feature_importance_ranking": ranking,
            "top_activating_contexts": contexts, "resources": resources,
            "markdown": markdown(baseline, training, {ns: c["hook_points"] for ns, c in causal.items()}, ranking,
                                 contexts, chance=chance, selection=selection, sources=_sources(prompts),
                                 missing=list(missing), probes={ns: m.get("probes") for ns, m in models.items()},
                                 resources=resources, effects=effects)}


def _effects_of(effects: pd.DataFrame | None, model: str, hook: str) -> pd.DataFrame | None:
    """One SAE's rows of the pooled effects table (None when there is none)."""
    if effects is None or effects.empty:
        return None
    return effects[(effects["model"] == model) & (effects["hook_point"] == hook)]


def _sources(prompts: pd.DataFrame) -> dict[str, str]:
    """benchmark -> what it is, e.g. "GSM8K-style, reasoning-gym gsm_symbolic" (prompts' `source`)."""
    if "source" not in prompts:
        return {}
    return {b: ", ".join(sorted(d["source"].dropna().astype(str).unique())) for b, d in prompts.groupby("benchmark")}


def planted_dictionary(training: dict) -> dict | None:
    """The planted-dictionary check of the first SAE that has one (same settings, same result)."""
    for t in training.values():
        metrics = t["sae_metrics"] or {}
        for m in (metrics.get("hook_points", metrics) or {}).values():
            if isinstance(m, dict) and isinstance(m.get("planted_dictionary"), dict):
                return m["planted_dictionary"]
    return None


STAND_INS = {"gsm8k": "GSM8K-style", "math": "MATH-style", "logic": "logic"}


def benchmark_name(bench: str, sources: dict) -> str:
    """`gsm8k (GSM8K-style: reasoning-gym gsm_symbolic)`: what the benchmark is, not what it imitates."""
    src = sources.get(bench)
    return f"{bench} ({STAND_INS.get(bench, bench)}: {src})" if src else bench


def baseline_section(baseline: pd.DataFrame, chance: dict, sources: dict) -> list[str]:
    L = ["## 1. Baseline: does the model solve the benchmarks?", "",
         "Accuracy: greedy decoding reproduces the gold answer exactly (open answers; with worked-solution "
         "prompts, the answer extracted from the model's own generated solution) or the gold choice has the "
         f"highest log-probability (choice questions), with a Wilson 95% CI. Chance: the {CHANCE_RULE}. "
         "Above chance: an exact one-sided binomial test of accuracy > chance rejects at α = 0.05 (p shown). "
         "Gold log-prob: summed log-probability of the gold answer tokens, teacher-forced (after the gold "
         "solution with worked-solution prompts). All examples of the prompts table.", "",
         "| model | benchmark | prompt format | n | accuracy [95% CI] | chance (constant answer) | p (binomial) | "
         "above chance | gold log-prob | model's own answer = gold |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for (model, bench), d in baseline.groupby(["model", "benchmark"]):
        c = chance.get(model, {}).get(bench)
        if c is None:
            continue
        own = d.generated_correct.mean() if "generated_correct" in d else None
        fmt_ = d["prompt_format"].iloc[0] if "prompt_format" in d else "answer_only"
        lo, hi = c["ci"]
        L.append(f"| {model} | {benchmark_name(bench, sources)} | {fmt_} ({c['accuracy_method']}) | {c['n']} | "
                 f"{c['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] | {c['chance']:.1%} ({md(str(c['constant_answer']))[:40]}) | "
                 f"{c['p_value']:.2g} | {'**yes**' if c['above_chance'] else 'no'} | {d.gold_logprob.mean():.2f} | "
                 f"{_fmt(own, pct=True)} |")
    return L + ["", "![baseline accuracy](baseline_accuracy.png)", ""]


def sae_lines(model: str, hook: str, m: dict) -> list[str]:
    keys = [k for k in ("n_tokens", "mse", "fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction") if k in m]
    t = m.get("training") or {}
    src = t.get("source") or {}   # a pretrained SAE's provenance (sae/pretrained.py)
    origin = (f"pretrained: {src['release']}/{src['sae_id']}" if src.get("release")
              else f"pretrained: {src.get('path')}" if src else "trained")
    L = [f"- SAE `{model}` `{hook}` ({origin}) on held-out tokens: "
         + ", ".join(f"{k} {_fmt(m[k])}" for k in keys) + "."]
    if t.get("n_train_tokens_by_source"):   # what training read (sae_training.sources)
        L.append("  - trained on " + ", ".join(f"{src} {n:,}" for src, n in t["n_train_tokens_by_source"].items())
                 + f" tokens ({t.get('steps')} steps, {t.get('tokens_seen') or 0:,} tokens seen).")
    if m.get("k") is not None and t.get("inference_l0_train") is not None:
        L.append(f"  - BatchTopK-family inference (one shared threshold {_fmt(t.get('topk_threshold'))}, calibrated "
                 f"on {t.get('calibration_tokens')} training tokens so that L0 = k): inference L0 "
                 f"{_fmt(t['inference_l0_train'])} on those tokens, {_fmt(m.get('l0'))} held out; k = {m['k']}.")
    elif m.get("k") is not None:
        L.append(f"  - TopK: L0 {_fmt(m.get('l0'))} held out; k = {m['k']}.")
    sp = m.get("spliced")
    if isinstance(sp, dict) and "ce_loss_score" in sp:
        L.append(f"  - spliced into the model (reconstruction in place of the residual, no error term) on "
                 f"{sp['n_prompts']} held-out prompts ({sp['n_predicted_tokens']:,} predicted tokens): CE loss "
                 f"recovered {_fmt(sp['ce_loss_score'])} (CE clean {sp['ce_loss_without_sae']:.3f}, with SAE "
                 f"{sp['ce_loss_with_sae']:.3f}, residual zero-ablated {sp['ce_loss_with_ablation']:.3f}); "
                 f"KL to the clean model {sp['kl_div_with_sae']:.3f} (zero-ablated {sp['kl_div_with_ablation']:.3f}).")
    return L


def activations_section(training: dict) -> list[str]:
    L = ["## 2. Activations and SAEs", ""]
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
            if isinstance(m, dict):
                L += sae_lines(model, hook, m)
    return L + ["", "Training curves: `<model>_sae_training_curve.png`.", ""]


DEPARTURES = [
    "## Where this study departs from the papers it follows", "",
    "- Circuits (Marks et al. 2024): one SAE at one layer, so a circuit is a set of features feeding the answer "
    "metric, with no feature-to-feature edges; error nodes are one node per layer, ablated in the empty circuit "
    "and the circuit alone by default, kept in the labelled variant. Nodes are ordered by |attribution estimate| "
    "and the circuit is the smallest checked top-k that recovers the target share exactly (not a threshold on "
    "indirect effects).",
    "- Attribution estimates of mean ablation use the select split's mean pooled over benchmarks and position "
    "types (the exact ablations use the per-benchmark, per-position-type means); the estimate only orders "
    "features, every reported effect is exact.",
    "- Benchmarks are stand-ins generated offline by reasoning-gym (named per row above), not GSM8K, MATH or a "
    "published logic set; results speak of these generators.",
    "",
]


def markdown(baseline: pd.DataFrame, training: dict, causal: dict, ranking: dict, contexts: dict | None = None, *,
             chance: dict | None = None, selection: dict | None = None, sources: dict | None = None,
             missing: list[str] | None = None, probes: dict | None = None, resources: dict | None = None,
             effects: pd.DataFrame | None = None) -> str:
    contexts, chance, selection, sources = contexts or {}, chance or {}, selection or {}, sources or {}
    L = ["# Phase 4 report: SAE features that models use to answer reasoning problems",
         "", f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}. Models: "
         + ", ".join(f"`{m}`" for m in training) + ".", ""]
    if missing:
        L += [f"**Not in this report: {', '.join(f'`{m}`' for m in missing)}** (configured, but its namespace did "
              "not finish in this run; the run's summary and `logs/<run_id>/<model>.log` say why).", ""]
    L += baseline_section(baseline, chance, sources)
    L += activations_section(training)
    L += ["## 3. Causal effects of SAE features", "", *METHODS, "",
          "What the causal stage analysed (only benchmarks where the clean model is above chance, unless "
          "`causal.require_above_chance` is off):", ""]
    for model in training:
        L += selection_lines(model, selection.get(model, {}))
    L.append("")
    for model, per_hook in causal.items():
        for hook, s in per_hook.items():
            L += hook_section(model, hook, s, ranking[model][hook], contexts.get(model, {}).get(hook, {}),
                              effects=_effects_of(effects, model, hook))
    if any(causal.values()):
        L += ["Δ gold log-prob per benchmark of each feature ablated alone (zero ablation; x: feature ids, candidates "
              "in rank order, the random controls in their own panel; whiskers: 95% CI; band: the null threshold):", "",
              "![feature effects per benchmark](feature_effects.png)", ""]
    if sum(len(v) for v in causal.values()) > 1:
        L += ["## 4. Across models", "",
              "| model | hook point | all-features Δ log-prob | top-feature mean Δ | control mean Δ | important / tested |",
              "|---|---|---|---|---|---|"]
        for model, per_hook in causal.items():
            for hook, s in per_hook.items():
                cand = (s.get("significance") or {}).get("candidates", {})
                L.append(f"| {model} | {hook} | {s['all_features_zero']['delta_logprob']:+.3f} | "
                         f"{_fmt(s['top_feature_mean_delta_logprob'])} | {_fmt(s['random_control_mean_delta_logprob'])} | "
                         f"{cand.get('important', 0)} / {cand.get('tested', 0)} |")
        L.append("")
    L += probes_section(probes or {})
    L += planted_section(training)
    L += ["## Calibration of the tests", "",
          "The importance procedure (cluster sign-flip p-values, BH over candidates, null-quantile magnitude) is "
          "checked where the truth is known by `tests/causal/test_calibration.py` on simulated per-example "
          "effects with shared templates (false discovery rate at or below α over many seeds; power reported by "
          "`benchmarks/calibration.py`), and by `tests/causal/test_ground_truth.py` on a tiny model with one "
          "planted causal feature (called important; random live features pass at about the rate the criterion "
          "implies) and a null model whose answer ignores the residual (nothing called). Limit: a feature whose "
          "true effect is a small consistent bias, comparable to the standard error of its mean, is a real "
          "effect for the q-value; only the null-threshold criterion keeps such features out, at the rate "
          "1 − null quantile.", ""]
    L += DEPARTURES
    L += resources_section(resources)
    L += ["## Sources", "", "Baseline: `data/07_model_output/<model>/baseline_scores.parquet`; SAE metrics: "
          "`<model>/sae_metrics.json`; effects: `<model>/feature_effects.parquet`; ranking: "
          "`feature_importance_ranking.json`; causal summary and chance tests: `causal_test_results.json`; circuits: "
          "`data/07_model_output/<model>/circuit.json` (networkx node-link); contexts: "
          "`top_activating_contexts.json`; linear probes: `<model>/probe_results.json` (also in "
          "`causal_test_results.json`); activations: "
          "`data/04_feature/activations/<model>/<benchmark>/<hook point>/manifest.json`.", ""]
    return "\n".join(L)


def planted_section(training: dict) -> list[str]:
    planted = planted_dictionary(training)
    if not planted:
        return []
    d, sae = planted["data"], planted["sae"]
    return ["## Methods: does the trainer find known features?", "",
            f"Synthetic activations from a planted sparse dictionary: {d['n_features']} unit directions in "
            f"d_in {d['d_in']}, {d['active_per_token']} active per token with coefficients {d['coefficients']}, "
            f"noise std {d['noise_std']}, {d['n_tokens']:,} tokens. The trainer with this run's settings "
            f"({sae['architecture']}, d_sae {sae['d_sae']}, {sae['steps']} steps) recovered "
            f"**{planted['fraction_recovered']:.1%}** of the planted directions at cosine >= "
            f"{planted['cosine_threshold']} (mean best cosine {planted['mean_best_cosine']:.3f}; target "
            f"{planted['target']}: {'met' if planted['passed'] else 'NOT met'}).", "",
            "![planted dictionary recovery](planted_dictionary.png)", ""]
