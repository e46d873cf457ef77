"""Figures of the report."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def accuracy_vs_chance(chance: dict[str, dict]):
    """Baseline accuracy per model and benchmark with Wilson 95% CIs; chance (the best
    constant answer) marked; * where the exact binomial test says above chance."""
    rows = [{"model": m, "benchmark": b, **c} for m, per in chance.items() for b, c in per.items()]
    table = pd.DataFrame(rows)
    benchmarks = sorted(table.benchmark.unique()) if len(table) else []
    models = sorted(table.model.unique()) if len(table) else []
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * max(len(benchmarks), 1), 3.6))
    width = 0.8 / max(len(models), 1)
    for j, model in enumerate(models):
        sub = table[table.model == model].set_index("benchmark").reindex(benchmarks)
        xs = [i + j * width for i in range(len(benchmarks))]
        lo = [a - c[0] for a, c in zip(sub.accuracy, sub.ci)]
        hi = [c[1] - a for a, c in zip(sub.accuracy, sub.ci)]
        ax.bar(xs, sub.accuracy, width, yerr=[lo, hi], capsize=3, label=model)
        for x, acc, n, up, top in zip(xs, sub.accuracy, sub.n, sub.above_chance, [c[1] for c in sub.ci]):
            ax.text(x, top + 0.01, f"{acc:.0%}{'*' if up else ''}\nn={int(n)}", ha="center", va="bottom", fontsize=7)
    for i, b in enumerate(benchmarks):
        c = table[table.benchmark == b].chance.mean()
        ax.hlines(c, i - width / 2, i + width * (len(models) - 0.5), colors="k", linestyles="--")
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(benchmarks))], benchmarks)
    ax.set_ylabel("baseline accuracy")
    ax.set_ylim(0, 1.15)
    ax.set_title("Baseline accuracy, Wilson 95% CI (dashed: chance; *: above chance, exact binomial p < 0.05)",
                 fontsize=8)
    if models:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def feature_effects(effects: pd.DataFrame):
    """Exact Δ gold log-prob per ablated feature (zero ablation, pooled benchmarks): candidates by
    feature id, and apart from them the random controls and the null (threshold band)."""
    sub = effects[(effects.benchmark == "all") & (effects["mode"] == "zero")
                  & effects.role.isin(["candidate", "control", "null"])]
    groups = list(sub.groupby(["model", "hook_point"]))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(6.5 * max(len(groups), 1), 3.8), squeeze=False)
    for ax, ((model, hook), d) in zip(axes[0], groups):
        x0 = 0
        for role, color in (("candidate", "C3"), ("control", "C7"), ("null", "C0")):
            r = d[d.role == role].sort_values("delta_logprob")
            xs = list(range(x0, x0 + len(r)))
            err = [r.delta_logprob - r.delta_logprob_lo, r.delta_logprob_hi - r.delta_logprob]
            ax.errorbar(xs, r.delta_logprob, yerr=err, fmt="none", ecolor=color, lw=0.8, alpha=0.6)
            ax.scatter(xs, r.delta_logprob, color=color, label=f"{role} (n={len(r)})", s=14)
            if role == "candidate":
                ax.set_xticks(xs, [str(int(f)) for f in r.feature], rotation=90, fontsize=6)
            x0 += len(r) + 2
        thr = d["null_threshold_logprob"].dropna()
        if len(thr):
            ax.axhspan(-float(thr.iloc[0]), float(thr.iloc[0]), color="C0", alpha=0.12,
                       label="null |Δ| threshold")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{model} {hook}", fontsize=9)
        ax.set_xlabel("candidate feature id | random controls | null features")
        ax.set_ylabel("Δ gold log-prob (zero ablation)")
        ax.legend(fontsize=7)
    fig.suptitle("Per-feature ablation effect on held-out examples (bars: 95% CI)", fontsize=10)
    fig.tight_layout()
    return fig


def empty(message: str):
    """A placeholder figure that says why there is nothing to plot."""
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return fig
