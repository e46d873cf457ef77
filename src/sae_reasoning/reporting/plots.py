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
        for x, acc, n, up, top in zip(
            xs, sub.accuracy, sub.n, sub.above_chance, [c[1] for c in sub.ci]
        ):
            ax.text(
                x,
                top + 0.01,
                f"{acc:.0%}{'*' if up else ''}\nn={int(n)}",
                ha="center",
                va="bottom",
                fontsize=7,
            )
    for i, b in enumerate(benchmarks):
        c = table[table.benchmark == b].chance.mean()
        ax.hlines(c, i - width / 2, i + width * (len(models) - 0.5), colors="k", linestyles="--")
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(benchmarks))], benchmarks)
    ax.set_ylabel("baseline accuracy")
    ax.set_ylim(0, 1.15)
    ax.set_title(
        "Baseline accuracy, Wilson 95% CI (dashed: chance; *: above chance, exact "
        "binomial p < 0.05)",
        fontsize=8,
    )
    if models:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


PANELS = (("candidate", "candidates (rank order)"), ("control", "random controls"))


def feature_effects(effects: pd.DataFrame):
    """Exact Δ gold log-prob of each feature ablated alone (zero ablation), per benchmark and
    pooled, with 95% CI whiskers. One row per (model, hook point); feature ids on the x-axis;
    candidates in rank order (pooled Δ, most negative first) in one panel, the random controls
    in their own. Band: the null |Δ| threshold of the pooled rows (random live features ablated
    the same way)."""
    sub = effects[(effects["mode"] == "zero") & effects["role"].isin([r for r, _ in PANELS])]
    groups = list(sub.groupby(["model", "hook_point"]))
    benches = sorted(b for b in sub["benchmark"].unique() if b != "all")
    benches += ["all"] if len(benches) != 1 else []  # with one benchmark, the pooled rows repeat it
    # Panel widths follow the most features any SAE has in that role, so markers keep one spacing.
    counts = sub.groupby(["role", "model", "hook_point"])["feature"].nunique()
    widths = [max([1, *counts.get(role, pd.Series(dtype=int)).tolist()]) for role, _ in PANELS]
    fig, axes = plt.subplots(
        max(len(groups), 1),
        2,
        squeeze=False,
        sharey="row",
        gridspec_kw={"width_ratios": widths},
        figsize=(2.2 + 0.55 * sum(widths), 3.4 * max(len(groups), 1)),
    )
    for row, ((model, hook), d) in zip(axes, groups):
        for ax, (role, title) in zip(row, PANELS):
            _effects_panel(ax, d[d.role == role], benches)
            ax.set_title(f"{model} {hook}: {title}", fontsize=8)
        thr = d.loc[d.benchmark == "all", "null_threshold_logprob"].dropna()
        for ax in row:
            if len(thr):
                ax.axhspan(
                    -float(thr.iloc[0]),
                    float(thr.iloc[0]),
                    color="0.5",
                    alpha=0.15,
                    label="null |Δ| threshold",
                )
            ax.axhline(0, color="k", lw=0.5)
            ax.set_xlabel("feature id")
        row[0].set_ylabel("Δ gold log-prob (zero ablation)")
        row[0].legend(fontsize=6)
    fig.suptitle(
        "Per-feature ablation effect on held-out examples, per benchmark (whiskers: 95% CI)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _effects_panel(ax, d: pd.DataFrame, benches: list[str]) -> None:
    """Features along x (ordered by pooled Δ), one offset marker per benchmark."""
    pooled = d[d.benchmark == "all"].set_index("feature")["delta_logprob"].sort_values()
    feats = list(pooled.index) or sorted(d.feature.unique())
    if not feats:
        ax.text(
            0.5,
            0.5,
            "none in this run",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=8,
        )
        ax.set_xticks([])
        return
    step = 0.8 / len(benches)
    for j, b in enumerate(benches):
        r = d[d.benchmark == b].set_index("feature").reindex(feats)
        xs = [i + (j - (len(benches) - 1) / 2) * step for i in range(len(feats))]
        err = [
            (r.delta_logprob - r.delta_logprob_lo).clip(lower=0),
            (r.delta_logprob_hi - r.delta_logprob).clip(lower=0),
        ]
        ax.errorbar(
            xs,
            r.delta_logprob,
            yerr=err,
            fmt="o",
            ms=3,
            lw=0.8,
            capsize=1.5,
            color="k" if b == "all" else f"C{j}",
            label="pooled" if b == "all" else b,
        )
    ax.set_xticks(range(len(feats)), [str(int(f)) for f in feats], rotation=90, fontsize=6)
    ax.set_xlim(-0.6, len(feats) - 0.4)


def empty(message: str):
    """A placeholder figure that says why there is nothing to plot."""
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return fig
