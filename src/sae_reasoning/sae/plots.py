"""Training-curve figure: loss, MSE, L0 and dead fraction against training tokens.

Built with the object-oriented API (no pyplot), so it neither needs nor changes a backend
and leaves no figure registered in a notebook; the catalog saves it.
"""

from __future__ import annotations

from matplotlib.figure import Figure

PANELS = (
    ("loss", "loss (MSE + sparsity / auxiliary terms)", "log"),
    ("mse", "MSE per token (normalised units)", "log"),
    ("l0", "L0 (active latents / token)", "log"),
    ("dead_fraction", "dead fraction (silent for dead_window_tokens)", "linear"),
)


def plot_training_curves(histories: dict[str, dict[str, list]], title: str | None = None) -> Figure:
    """One line per hook point; `histories` maps hook point -> training log (columns)."""
    fig = Figure(figsize=(4.2 * len(PANELS), 3.6), layout="constrained")
    axes = fig.subplots(1, len(PANELS))
    for ax, (key, label, scale) in zip(axes, PANELS):
        values = []
        for hook, log in sorted(histories.items()):
            if log and log.get(key):
                ax.plot(log["tokens"], log[key], label=hook, linewidth=1.2)
                values += log[key]
        ax.set_xlabel("training tokens")
        ax.set_title(label, fontsize=10)
        if scale == "log" and values and min(values) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if any(histories.values()):
        axes[0].legend(fontsize=8)
    fig.suptitle(title or "SAE training (inputs normalised to E||x|| = sqrt(d_in))", fontsize=11)
    return fig


def plot_planted_recovery(result: dict, title: str | None = None) -> Figure:
    """Histogram of each planted direction's best cosine with a decoder row
    (ground_truth.planted_dictionary_recovery's result), with the 0.9 recovery line."""
    fig = Figure(figsize=(5.0, 3.4), layout="constrained")
    ax = fig.subplots()
    best = result["best_cosine"]
    ax.hist(best, bins=40, range=(min(0.0, min(best)), 1.0), color="tab:blue")
    thr = result.get("cosine_threshold", 0.9)
    ax.axvline(thr, color="tab:red", linestyle="--", linewidth=1)
    ax.set_xlabel("best cosine of a planted direction with a decoder row")
    ax.set_ylabel("planted directions")
    d, s = result.get("data", {}), result.get("sae", {})
    ax.set_title(
        title
        or (
            f"{100 * result['fraction_recovered']:.0f}% recovered at cos >= {thr} "
            f"({s.get('architecture', '?')}, d_sae {s.get('d_sae', '?')}, "
            f"{d.get('n_features', '?')} planted)"
        ),
        fontsize=9,
    )
    return fig
