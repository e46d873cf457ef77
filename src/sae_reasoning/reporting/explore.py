"""Tables and figures for notebooks/explore_results.ipynb, built from what the catalog loads
(`causal_test_results`, `training_summary`, `feature_importance_ranking`, `resources_summary`,
`<model>.feature_effects`, `<model>.probe_results`). Plain pandas/matplotlib: usable without
Kedro or Jupyter, e.g. on the JSON files read by hand."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

EFFECT_ROLES = ("candidate", "control")  # ranked candidates, and random live features as controls


def baseline_table(causal_test_results: dict) -> pd.DataFrame:
    """Baseline accuracy vs chance per model and benchmark, and whether the causal stage
    analysed it."""
    rows = []
    for model, res in causal_test_results.items():
        analysed = set((res.get("selection") or {}).get("analysed") or [])
        for bench, c in (res.get("baseline_vs_chance") or {}).items():
            lo, hi = c.get("ci") or (None, None)
            rows.append(
                {
                    "model": model,
                    "benchmark": bench,
                    "n": c["n"],
                    "accuracy": c["accuracy"],
                    "ci_lo": lo,
                    "ci_hi": hi,
                    "chance": c["chance"],
                    "constant_answer": c.get("constant_answer"),
                    "p_binomial": c["p_value"],
                    "above_chance": c["above_chance"],
                    "analysed": bench in analysed,
                }
            )
    return pd.DataFrame(rows)


def sae_table(training_summary: dict) -> pd.DataFrame:
    """One row per SAE: held-out L0, FVU, dead/dense fractions; spliced CE loss recovered and KL."""
    rows = []
    for model, t in training_summary.items():
        metrics = t.get("sae_metrics") or {}
        for hook, m in (metrics.get("hook_points", metrics) or {}).items():
            if not isinstance(m, dict):
                continue
            src = (m.get("training") or {}).get("source") or {}
            spliced = m.get("spliced") if isinstance(m.get("spliced"), dict) else {}
            rows.append(
                {
                    "model": model,
                    "hook_point": hook,
                    "architecture": m.get("architecture"),
                    "origin": "pretrained" if src else "trained",
                    "d_in": m.get("d_in"),
                    "d_sae": m.get("d_sae"),
                    "L0": m.get("l0"),
                    "FVU": m.get("fvu"),
                    "dead_fraction": m.get("dead_fraction"),
                    "dense_fraction": m.get("dense_fraction"),
                    "ce_loss_recovered": spliced.get("ce_loss_recovered"),
                    "kl_with_sae": spliced.get("kl_div_with_sae"),
                }
            )
    return pd.DataFrame(rows)


def ranking_table(ranking: dict, top: int | None = 10) -> pd.DataFrame:
    """The feature ranking (`feature_importance_ranking`: model -> hook point -> rows), `top`
    per SAE, with one `Δ <benchmark>` column per analysed benchmark."""
    rows = []
    for model, per_hook in ranking.items():
        for hook, ranked in per_hook.items():
            for r in ranked[:top]:
                lo, hi = r.get("delta_logprob_ci") or (None, None)
                row = {
                    "model": model,
                    "hook_point": hook,
                    "rank": r["rank"],
                    "feature": r["feature"],
                    "delta_logprob": r["delta_logprob"],
                    "ci_lo": lo,
                    "ci_hi": hi,
                    "q": r.get("q_logprob"),
                    "important": r.get("important"),
                    "token_driven": r.get("token_driven"),
                    "in_circuit": r.get("in_circuit"),
                    "firing_rate": r.get("firing_rate"),
                }
                for bench, b in sorted((r.get("per_benchmark") or {}).items()):
                    row[f"Δ {bench}"] = b.get("delta_logprob")
                rows.append(row)
    return pd.DataFrame(rows)


def per_benchmark_effects(effects: pd.DataFrame, mode: str = "zero") -> pd.DataFrame:
    """Candidates' and random controls' exact Δ gold log-prob per benchmark (pooled rows dropped),
    candidates ordered as the ranking orders them (pooled Δ, most harmful first), controls after."""
    missing = {"role", "mode", "benchmark", "feature", "delta_logprob", "hook_point"} - set(
        effects.columns
    )
    if missing:
        raise ValueError(f"feature_effects lacks columns {sorted(missing)}")
    sel = effects[effects.role.isin(EFFECT_ROLES) & (effects["mode"] == mode)]
    pooled = sel[sel.benchmark == "all"].set_index(["hook_point", "role", "feature"]).delta_logprob
    out = sel[sel.benchmark != "all"].copy()
    out["pooled"] = [
        pooled.get((h, r, f)) for h, r, f in zip(out.hook_point, out.role, out.feature)
    ]
    out["role_order"] = out.role.map({r: i for i, r in enumerate(EFFECT_ROLES)})
    out = out.sort_values(["hook_point", "role_order", "pooled", "feature", "benchmark"])
    return out.drop(columns="role_order").reset_index(drop=True)


def _panel(ax, d: pd.DataFrame, benchmarks: list[str]):
    """Markers per benchmark side by side at each feature id; bars: the 95% CI."""
    features = list(dict.fromkeys(d.feature))
    width = 0.8 / max(len(benchmarks), 1)
    for j, bench in enumerate(benchmarks):
        b = d[d.benchmark == bench].set_index("feature").reindex(features)
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(features))]
        err = None
        if {"delta_logprob_lo", "delta_logprob_hi"} <= set(b.columns):
            err = [b.delta_logprob - b.delta_logprob_lo, b.delta_logprob_hi - b.delta_logprob]
        ax.errorbar(
            xs,
            b.delta_logprob,
            yerr=err,
            fmt="o",
            ms=3.5,
            lw=0.8,
            capsize=2,
            color=f"C{j}",
            label=bench,
        )
    ax.set_xticks(range(len(features)), [str(int(f)) for f in features], rotation=90, fontsize=7)
    ax.set_xlim(-0.7, len(features) - 0.3)
    ax.axhline(0, color="k", lw=0.5)


def plot_per_benchmark_effects(effects: pd.DataFrame, mode: str = "zero"):
    """One row per (model, hook point): candidates by feature id (left) and, in a panel apart, the
    random controls (right); one colour per benchmark. `effects`: `<model>.feature_effects` rows
    (with a `model` column when several models are concatenated)."""
    d = per_benchmark_effects(effects, mode)
    if "model" not in d:
        d = d.assign(model="")
    groups = list(d.groupby(["model", "hook_point"], sort=False))
    if not groups:
        raise ValueError(
            f"no candidate or control rows with mode {mode!r} and a per-benchmark effect"
        )
    benchmarks = sorted(d.benchmark.unique())
    n_cand = max((g.role == "candidate").groupby(g.feature).any().sum() for _, g in groups)
    fig, axes = plt.subplots(
        len(groups),
        2,
        figsize=(4 + 0.45 * n_cand, 3.4 * len(groups)),
        squeeze=False,
        sharey="row",
        gridspec_kw={"width_ratios": [max(n_cand, 1), 3]},
    )
    for (ax_c, ax_r), ((model, hook), g) in zip(axes, groups):
        for ax, role, title in (
            (ax_c, "candidate", "candidates (ranked)"),
            (ax_r, "control", "random controls"),
        ):
            part = g[g.role == role]
            if len(part):
                _panel(ax, part, benchmarks)
            ax.set_title(f"{model} {hook}: {title}" if role == "candidate" else title, fontsize=9)
            ax.set_xlabel("feature id")
        ax_c.set_ylabel(f"Δ gold log-prob ({mode} ablation)")
        ax_c.legend(fontsize=7, title="benchmark", title_fontsize=7)
    fig.suptitle(
        "Per-benchmark effect of ablating each feature, held-out examples (bars: 95% CI)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def probes_table(probe_results: dict[str, dict | None]) -> pd.DataFrame:
    """Held-out probe accuracy vs the majority class, per model, hook point, target and input
    (`<model>.probe_results` per model; None where probes are off)."""
    rows = []
    for model, res in probe_results.items():
        for hook, h in ((res or {}).get("hook_points") or {}).items():
            for target, t in (h.get("targets") or {}).items():
                for rep in ("residual", "sae_codes"):
                    r = t.get(rep)
                    if not isinstance(r, dict) or "accuracy" not in r:
                        continue
                    rows.append(
                        {
                            "model": model,
                            "hook_point": hook,
                            "target": target,
                            "input": rep,
                            "n_heldout": r.get("n_heldout"),
                            "accuracy": r["accuracy"],
                            "majority_accuracy": r.get("majority_accuracy"),
                            "gain": r.get("gain"),
                            "p": r.get("p"),
                            "beats_majority": r.get("beats_majority"),
                            "nonzero_features": r.get("n_nonzero"),
                        }
                    )
    return pd.DataFrame(rows)


def resources_table(resources_summary: dict) -> pd.DataFrame:
    """The resource ledger per model namespace and stage (`resources_summary`)."""
    t = pd.DataFrame(resources_summary.get("stages") or [])
    if "peak_memory_bytes" in t:
        t["peak_memory_gib"] = t.pop("peak_memory_bytes") / 2**30
    keep = [
        "namespace",
        "stage",
        "nodes",
        "wall_s",
        "devices",
        "peak_memory_gib",
        "tokens",
        "tokens_per_s",
        "device_hours",
        "not_done",
    ]
    return t[[c for c in keep if c in t]]


def dashboard_page(site: str | Path, hook: str, feature: int | None = None) -> Path | None:
    """A model's feature dashboard page `<site>/<hook point>/feature_<id>.html` (the index when
    `feature` is None; `site`: the `<model>.feature_dashboards` folder), or None where it was not
    generated."""
    page = Path(site) / hook / ("index.html" if feature is None else f"feature_{int(feature)}.html")
    return page if page.is_file() else None
