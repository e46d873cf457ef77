"""SAE evaluation on held-out tokens (SAELens vocabulary), streamed batch by batch.

For N tokens x_n in R^d with reconstructions x_hat_n and latents f_n in R^{d_sae}:

  mse                = (1/N) sum_n ||x_n - x_hat_n||^2              (per token, raw units)
  fvu                = sum_n ||x_n - x_hat_n||^2 / sum_n ||x_n - mean(x)||^2
                       (variance about the mean of x, not about zero)
  explained_variance = 1 - fvu
  l0                 = (1/N) sum_n #{i : f_n,i > 0}: inference L0 (BatchTopK family: with
                       the shared threshold), reported next to `k` for the TopK family
  dead_fraction      = fraction of latents that never fire on the N tokens (a small eval
                       set overstates it: a latent firing once per 10k tokens looks dead
                       on 5k; the training log's dead_fraction uses a token window instead)
  dense_fraction     = fraction of latents that fire on more than `dense_threshold` of them
  mean_norm          = (1/N) sum_n ||x_n||

Sums are kept in float64; the variance about the mean is merged across batches with
Chan et al.'s pairwise update, so the result does not depend on how tokens are batched.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

METRIC_NAMES = (
    "n_tokens",
    "mse",
    "fvu",
    "explained_variance",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "mean_norm",
    "n_dead",
    "n_dense",
    "d_sae",
)


class MetricsAccumulator:
    def __init__(self, d_sae: int, dense_threshold: float = 0.1):
        self.d_sae = d_sae
        self.dense_threshold = dense_threshold
        self.n = 0
        self.sq_err = 0.0
        self.norm_sum = 0.0
        self.l0_sum = 0.0
        self.mean: torch.Tensor | None = None  # running mean of x (float64)
        self.m2 = 0.0  # sum ||x - mean||^2
        self.fire_counts = torch.zeros(d_sae, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        """One batch: x, x_hat [n, d]; f [n, d_sae]."""
        x, x_hat = x.double().reshape(-1, x.shape[-1]), x_hat.double().reshape(-1, x.shape[-1])
        f = f.reshape(-1, f.shape[-1])
        n = x.shape[0]
        if n == 0:
            return
        self.sq_err += float((x - x_hat).pow(2).sum())
        self.norm_sum += float(x.norm(dim=-1).sum())
        active = f > 0
        self.l0_sum += float(active.sum())
        self.fire_counts += active.sum(0).double().cpu()
        mean_b = x.mean(0)
        m2_b = float((x - mean_b).pow(2).sum())
        if self.mean is None:
            self.mean, self.m2 = mean_b, m2_b
        else:
            delta = mean_b - self.mean
            total = self.n + n
            self.m2 += m2_b + float(delta.pow(2).sum()) * self.n * n / total
            self.mean = self.mean + delta * (n / total)
        self.n += n

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("no tokens to evaluate on")
        fvu = self.sq_err / self.m2 if self.m2 > 0 else float("nan")
        dead = int((self.fire_counts == 0).sum())
        dense = int((self.fire_counts > self.dense_threshold * self.n).sum())
        return {
            "n_tokens": self.n,
            "mse": self.sq_err / self.n,
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "l0": self.l0_sum / self.n,
            "dead_fraction": dead / self.d_sae,
            "dense_fraction": dense / self.d_sae,
            "mean_norm": self.norm_sum / self.n,
            "n_dead": dead,
            "n_dense": dense,
            "d_sae": self.d_sae,
        }


@torch.no_grad()
def evaluate_sae(
    sae,
    batches: Iterable[torch.Tensor],
    *,
    dense_threshold: float = 0.1,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Metrics of `sae` over the activation batches [n, d_in] (raw units)."""
    if device is not None:
        sae.to(device)
    device = sae.device
    acc = MetricsAccumulator(sae.d_sae, dense_threshold)
    for x in batches:
        x = x.to(device)
        f = sae.encode(x)
        acc.update(x, sae.decode(f), f)
    return with_k(acc.compute(), sae)


def with_k(metrics: dict, sae) -> dict:
    """`k` right after l0 for TopK-family SAEs (a BatchTopK one saved as jumprelu keeps it
    in cfg.metadata): its L0 on held-out tokens should match k."""
    k = sae.cfg.k if sae.cfg.k is not None else sae.cfg.metadata.get("k")
    if k is None:
        return metrics
    out = {}
    for name, value in metrics.items():
        out[name] = value
        if name == "l0":
            out["k"] = int(k)
    return out
