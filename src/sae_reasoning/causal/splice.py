"""The SAE spliced into the residual stream with its error term kept.

    resid' = x_hat(f') + (x - x_hat(f))      (f = SAE features of x, f' = f with some replaced)
           = x + (f' - f)[:, S] @ W_dec[S]    (S = the replaced features)

So nothing changes until a feature is touched (the identity holds exactly, not only up to
the SAE's reconstruction error), and only the touched features cost decoder compute.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from sae_reasoning.models.hooks import patch_residual

MODES = ("zero", "mean", "resample")


class FeatureAblation:
    """Replace features `features` of `sae` at every position the hook sees.

    zero:     f'_S = 0
    mean:     f'_S = the feature's mean activation over the benchmark tokens (`mean`)
    resample: f'_S = the feature's activation at a random token of other examples (`bank`:
              [N, d_sae] features of held-aside tokens), drawn with a fixed seed
    """

    def __init__(self, sae, features, mode: str = "zero", *, mean: torch.Tensor | None = None,
                 bank: torch.Tensor | None = None, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"ablation mode {mode!r}: expected one of {MODES}")
        if mode == "mean" and mean is None:
            raise ValueError("mean ablation needs the features' mean activations")
        if mode == "resample" and bank is None:
            raise ValueError("resample ablation needs a bank of feature activations")
        self.sae = sae
        self.features = torch.as_tensor(features, dtype=torch.long).reshape(-1)
        self.mode = mode
        self.mean = mean
        self.bank = bank
        self.seed = seed

    def replacement(self, f_sel: torch.Tensor) -> torch.Tensor:
        if self.mode == "zero":
            return torch.zeros_like(f_sel)
        if self.mode == "mean":
            return self.mean[self.features].to(f_sel).expand_as(f_sel)
        gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randint(len(self.bank), f_sel.shape[:-1], generator=gen)
        return self.bank[idx][..., self.features].to(f_sel)

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        if len(self.features) == 0:
            return resid
        f = self.sae.encode(resid.to(self.sae.W_dec.dtype))
        f_sel = f[..., self.features]
        delta = (self.replacement(f_sel) - f_sel) @ self.sae.W_dec[self.features]
        return resid + delta.to(resid.dtype)


@contextmanager
def spliced(model, layer: int, ablation: FeatureAblation):
    """Within the block, the SAE at `layer` runs in the model with `ablation` applied."""
    with patch_residual(model, layer, ablation):
        yield


class AttributionProbe:
    """Splice that exposes the SAE features as a leaf tensor for attribution patching.

    The forward value is unchanged (x + (f_leaf - f) @ W_dec with f_leaf == f), but the
    gradient of a metric with respect to every feature is available after backward.
    """

    def __init__(self, sae):
        self.sae = sae
        self.features: torch.Tensor | None = None

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = self.sae.encode(resid.detach().to(self.sae.W_dec.dtype))
        leaf = f.clone().requires_grad_(True)
        self.features = leaf
        return resid + ((leaf - f) @ self.sae.W_dec).to(resid.dtype)


class ErrorAblation:
    """Zero-ablate the SAE error term: resid' = x_hat(f), the SAE's reconstruction.

    Compared with ablating every feature (resid' = error + b_dec), this says how much of
    the model's behaviour rides on what the SAE fails to reconstruct.
    """

    def __init__(self, sae):
        self.sae = sae

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        x_hat = self.sae.decode(self.sae.encode(resid.to(self.sae.W_dec.dtype)))
        return x_hat.to(resid.dtype)


class DirectionControl:
    """Norm-matched random direction: the control for ablating the feature set `features`.

    Zero-ablating S moves each token's residual by -c, c = f_S @ W_dec[S]. This control
    moves it by -||c|| u instead, u a fixed random unit vector of the residual space: the
    same size of perturbation at the same tokens, in a direction no feature picked.
    """

    def __init__(self, sae, features, seed: int = 0):
        self.sae = sae
        self.features = torch.as_tensor(features, dtype=torch.long).reshape(-1)
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(sae.W_dec.shape[1], generator=gen)
        self.direction = u / u.norm()

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        f = self.sae.encode(resid.to(self.sae.W_dec.dtype))[..., self.features]
        size = (f @ self.sae.W_dec[self.features]).norm(dim=-1, keepdim=True)
        return resid - (size * self.direction.to(size)).to(resid.dtype)
