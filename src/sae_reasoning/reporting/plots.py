"""Figures of the report."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def accuracy_vs_chance(baseline: pd.DataFrame):
    """Baseline accuracy per model and benchmark, with the chance level marked."""
    table = baseline.groupby(["benchmark", "model"]).agg(accuracy=("correct", "mean"), chance=("chance", "mean"),
                                                         n=("correct", "size")).reset_index()
    benchmarks = sorted(table.benchmark.unique())
    models = sorted(table.model.unique())
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(benchmarks), 3.6))
    width = 0.8 / max(len(models), 1)
    for j, model in enumerate(models):
        sub = table[table.model == model].set_index("benchmark").reindex(benchmarks)
        xs = [i + j * width for i in range(len(benchmarks))]
        ax.bar(xs, sub.accuracy, width, label=model)
        for x, (acc, n) in zip(xs, zip(sub.accuracy, sub.n)):
            ax.text(x, acc + 0.01, f"{acc:.0%}\nn={int(n)}", ha="center", va="bottom", fontsize=7)
    for i, b in enumerate(benchmarks):
        chance = table[table.benchmark == b].chance.mean()
        ax.hlines(chance, i - width / 2, i + width * (len(models) - 0.5), colors="k", linestyles="--")
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(benchmarks))], benchmarks)
    ax.set_ylabel("baseline accuracy")
    ax.set_ylim(0, 1.1)
    ax.set_title("Baseline accuracy (dashed: chance level)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def feature_effects(effects: pd.DataFrame):
    """Exact drop in gold log-prob per ablated feature: top candidates vs random controls."""
    sub = effects[(effects.benchmark == "all") & (effects["mode"] == "zero") & effects.role.isin(["candidate", "control"])]
    groups = list(sub.groupby(["model", "hook_point"]))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4.5 * max(len(groups), 1), 3.6), squeeze=False)
    for ax, ((model, hook), d) in zip(axes[0], groups):
        for role, color in (("candidate", "C3"), ("control", "C7")):
            r = d[d.role == role].sort_values("delta_logprob")
            if {"delta_logprob_lo", "delta_logprob_hi"} <= set(r.columns):
                # Paired bootstrap 95% CIs as error bars.
                err = [r.delta_logprob - r.delta_logprob_lo, r.delta_logprob_hi - r.delta_logprob]
                ax.errorbar(range(len(r)), r.delta_logprob, yerr=err, fmt="none", ecolor=color, lw=0.8, alpha=0.6)
            ax.scatter(range(len(r)), r.delta_logprob, color=color, label=f"{role} (n={len(r)})", s=14)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{model} {hook}", fontsize=9)
        ax.set_xlabel("feature (sorted by effect)")
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
