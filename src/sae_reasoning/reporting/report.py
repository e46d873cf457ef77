"""PHASE4_REPORT.md and its JSON files, from every model namespace's report section.

Every number in the report comes from one of: <model>.baseline_scores, <model>.sae_metrics,
<model>.activations (manifests), <model>.feature_effects, <model>.feature_ranking,
<model>.causal_summary, <model>.feature_contexts, <model>.probe_results (circuits: the
circuit section of causal_summary; the graphs themselves are <model>.circuit), gathered per
model by `pipelines.reporting.nodes.report_section`.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from sae_reasoning.chance import baseline_vs_chance
from sae_reasoning.reporting.baseline_section import baseline_section, benchmark_sources
from sae_reasoning.reporting.causal_methods import METHODS
from sae_reasoning.reporting.causal_section import hook_section, selection_lines
from sae_reasoning.reporting.fmt import fmt
from sae_reasoning.reporting.probes_section import probes_section
from sae_reasoning.reporting.resources_section import section as resources_section
from sae_reasoning.reporting.resources_section import summarise as summarise_resources
from sae_reasoning.reporting.sae_section import activations_section, planted_section


def _pooled_effects(models: dict[str, dict]) -> pd.DataFrame:
    frames = [m["effects"].assign(model=ns) for ns, m in models.items() if len(m["effects"])]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def build(
    models: dict[str, dict],
    prompts: pd.DataFrame,
    missing: list[str] = (),
    resources: pd.DataFrame | None = None,
) -> dict:
    """models: namespace -> its report section (`report_section`: baseline, sae_metrics,
    activations (the manifests' summary), effects, ranking, summary, contexts, probes);
    prompts: the prompts table every model was scored on (for the chance baselines);
    resources: the resource ledger's records (datasets.ledger)."""
    resources = summarise_resources(resources if resources is not None else [])
    baseline = pd.concat(
        [m["baseline"].assign(model=ns) for ns, m in models.items()], ignore_index=True
    )
    effects = _pooled_effects(models)
    chance = {ns: baseline_vs_chance(m["baseline"], prompts) for ns, m in models.items()}
    selection = {ns: m["summary"].get("selection", {}) for ns, m in models.items()}
    training = {
        ns: {"activations": m["activations"], "sae_metrics": m["sae_metrics"]}
        for ns, m in models.items()
    }
    causal = {
        ns: {
            "selection": selection[ns],
            "baseline_vs_chance": chance[ns],
            "hook_points": m["summary"]["hook_points"],
            "probes": m.get("probes"),
        }
        for ns, m in models.items()
    }
    ranking = {ns: m["ranking"]["hook_points"] for ns, m in models.items()}
    contexts = {ns: (m.get("contexts") or {}).get("hook_points", {}) for ns, m in models.items()}
    text = markdown(
        baseline,
        training,
        {ns: c["hook_points"] for ns, c in causal.items()},
        ranking,
        contexts,
        chance=chance,
        selection=selection,
        sources=benchmark_sources(prompts),
        missing=list(missing),
        probes={ns: m.get("probes") for ns, m in models.items()},
        resources=resources,
        effects=effects,
    )
    return {
        "baseline": baseline,
        "effects": effects,
        "baseline_vs_chance": chance,
        "training_summary": training,
        "causal_test_results": causal,
        "feature_importance_ranking": ranking,
        "top_activating_contexts": contexts,
        "resources": resources,
        "markdown": text,
    }


def _effects_of(effects: pd.DataFrame | None, model: str, hook: str) -> pd.DataFrame | None:
    """One SAE's rows of the pooled effects table (None when there is none)."""
    if effects is None or effects.empty:
        return None
    return effects[(effects["model"] == model) & (effects["hook_point"] == hook)]


DEPARTURES = [
    "## Where this study departs from the papers it follows",
    "",
    "- Circuits (Marks et al. 2024): one SAE at one layer, so a circuit is a set of features "
    "feeding the answer metric, with no feature-to-feature edges; error nodes are one node per "
    "layer, ablated in the empty circuit and the circuit alone by default, kept in the labelled "
    "variant. Nodes are ordered by |attribution estimate| and the circuit is the smallest checked "
    "top-k that recovers the target share exactly (not a threshold on indirect effects).",
    "- Attribution estimates of mean ablation use the select split's mean pooled over benchmarks "
    "and position types (the exact ablations use the per-benchmark, per-position-type means); the "
    "estimate only orders features, every reported effect is exact.",
    "- Benchmarks are stand-ins generated offline by reasoning-gym (named per row above), not "
    "GSM8K, MATH or a published logic set; results speak of these generators.",
    "",
]

CALIBRATION = [
    "## Calibration of the tests",
    "",
    "The importance procedure (cluster sign-flip p-values, BH over candidates, null-quantile "
    "magnitude) is checked where the truth is known by `tests/causal/test_calibration.py` on "
    "simulated per-example effects with shared templates (false discovery rate at or below α "
    "over many seeds; power reported by `benchmarks/calibration.py`), and by "
    "`tests/causal/test_ground_truth.py` on a tiny model with one planted causal feature (called "
    "important; random live features pass at about the rate the criterion implies) and a null "
    "model whose answer ignores the residual (nothing called). Limit: a feature whose true effect "
    "is a small consistent bias, comparable to the standard error of its mean, is a real effect "
    "for the q-value; only the null-threshold criterion keeps such features out, at the rate "
    "1 − null quantile.",
    "",
]

SOURCES = [
    "## Sources",
    "",
    "Baseline: `data/07_model_output/<model>/baseline_scores.parquet`; SAE metrics: "
    "`<model>/sae_metrics.json`; effects: `<model>/feature_effects.parquet`; ranking: "
    "`feature_importance_ranking.json`; causal summary and chance tests: "
    "`causal_test_results.json`; circuits: `data/07_model_output/<model>/circuit.json` "
    "(networkx node-link); contexts: `top_activating_contexts.json`; linear probes: "
    "`<model>/probe_results.json` (also in `causal_test_results.json`); activations: "
    "`data/04_feature/activations/<model>/<benchmark>/<hook point>/manifest.json`.",
    "",
]

EFFECTS_PLOT = [
    "Δ gold log-prob per benchmark of each feature ablated alone (zero ablation; x: feature ids, "
    "candidates in rank order, the random controls in their own panel; whiskers: 95% CI; band: "
    "the null threshold):",
    "",
    "![feature effects per benchmark](feature_effects.png)",
    "",
]


def causal_section(
    training: dict,
    causal: dict,
    ranking: dict,
    contexts: dict,
    selection: dict,
    effects: pd.DataFrame | None,
) -> list[str]:
    L = [
        "## 3. Causal effects of SAE features",
        "",
        *METHODS,
        "",
        "What the causal stage analysed (only benchmarks where the clean model is above chance, "
        "unless `causal.require_above_chance` is off):",
        "",
    ]
    for model in training:
        L += selection_lines(model, selection.get(model, {}))
    L.append("")
    for model, per_hook in causal.items():
        for hook, s in per_hook.items():
            L += hook_section(
                model,
                hook,
                s,
                ranking[model][hook],
                contexts.get(model, {}).get(hook, {}),
                effects=_effects_of(effects, model, hook),
            )
    return L + (EFFECTS_PLOT if any(causal.values()) else [])


def across_models(causal: dict) -> list[str]:
    """Section 4, when the report has more than one SAE."""
    if sum(len(v) for v in causal.values()) <= 1:
        return []
    L = [
        "## 4. Across models",
        "",
        "| model | hook point | all-features Δ log-prob | top-feature mean Δ | control mean Δ "
        "| important / tested |",
        "|---|---|---|---|---|---|",
    ]
    for model, per_hook in causal.items():
        for hook, s in per_hook.items():
            cand = (s.get("significance") or {}).get("candidates", {})
            L.append(
                f"| {model} | {hook} | {s['all_features_zero']['delta_logprob']:+.3f} | "
                f"{fmt(s['top_feature_mean_delta_logprob'])} | "
                f"{fmt(s['random_control_mean_delta_logprob'])} | "
                f"{cand.get('important', 0)} / {cand.get('tested', 0)} |"
            )
    return L + [""]


def markdown(
    baseline: pd.DataFrame,
    training: dict,
    causal: dict,
    ranking: dict,
    contexts: dict | None = None,
    *,
    chance: dict | None = None,
    selection: dict | None = None,
    sources: dict | None = None,
    missing: list[str] | None = None,
    probes: dict | None = None,
    resources: dict | None = None,
    effects: pd.DataFrame | None = None,
) -> str:
    contexts, chance = contexts or {}, chance or {}
    selection, sources = selection or {}, sources or {}
    L = [
        "# Phase 4 report: SAE features that models use to answer reasoning problems",
        "",
        f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}. Models: "
        + ", ".join(f"`{m}`" for m in training)
        + ".",
        "",
    ]
    if missing:
        L += [
            f"**Not in this report: {', '.join(f'`{m}`' for m in missing)}** (configured, but "
            "its namespace did not finish in this run; the run's summary and "
            "`logs/<run_id>/<model>.log` say why).",
            "",
        ]
    L += baseline_section(baseline, chance, sources)
    L += activations_section(training)
    L += causal_section(training, causal, ranking, contexts, selection, effects)
    L += across_models(causal)
    L += probes_section(probes or {})
    L += planted_section(training)
    L += CALIBRATION + DEPARTURES
    L += resources_section(resources)
    L += SOURCES
    return "\n".join(L)
