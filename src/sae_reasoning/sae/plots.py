"""Training-curve figure: loss, MSE, L0 and dead fraction against training tokens.

Built with the object-oriented API (no pyplot), so it neither needs nor changes a backend
and leaves no figure registered in a notebook; the catalog saves it.
"""

from __future__ import annotations

from matplotlib.figure import Figure

PANELS = (("loss", "loss (MSE + L1)", "log"), ("mse", "MSE per token (normalised units)", "log"),
          ("l0", "L0 (active latents / token)", "log"),
          ("dead_fraction", "dead fraction (silent for dead_window_tokens)", "linear"))


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
