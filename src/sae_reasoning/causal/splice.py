"""The SAE spliced into the residual stream with its error term kept.

    resid' = x_hat(f') + (x - x_hat(f))      (f = SAE features of x, f' = f with some replaced)
           = x + (f' - f)[:, S] @ W_dec[S]    (S = the replaced features)

So nothing changes until a feature is touched (the identity holds exactly, not only up to
the SAE's reconstruction error), and only the touched features cost decoder compute.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

from sae_reasoning.causal.references import AblationReferences
from sae_reasoning.scoring import patch_residual
from sae_reasoning.scoring.encode_memo import encode

MODES = ("zero", "mean", "resample")


class FeatureAblation:
    """Replace features `features` of `sae` at every position the hook sees.

    zero:     f'_S = 0
    mean:     f'_S = the feature's mean activation over the select split's tokens of the
              same benchmark and the same position type (`references`, an
              causal.references.AblationReferences: few-shot block, question, last prompt
              token or answer tokens)
    resample: f'_S = the feature's activation in another select example of the same
              benchmark (never the example itself) at the aligned position (same answer
              offset, same offset from the question's end), drawn per example from
              (`seed`, benchmark, example id): see causal/references.py. In the few-shot
              block, which every example shares, the resampled value is the clean one.

    mean and resample depend on where the hook runs: bind the ablation to a batch and a
    segment with `at(batch, segment)` (score_conditions does, through `condition`).
    Zero ablation needs no binding: the object itself is the hook.
    """

    def __init__(self, sae, features, mode: str = "zero", *, references=None, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"ablation mode {mode!r}: expected one of {MODES}")
        if mode != "zero":
            if references is None:
                raise ValueError(
                    f"{mode} ablation needs references: FeatureAblation(..., references="
                    f"AblationReferences.build(lm, sae, layer, select, ...))"
                )
            if not isinstance(references, AblationReferences):
                raise TypeError(
                    f"{mode} ablation: references must be an AblationReferences, "
                    f"not {type(references).__name__}"
                )
        self.sae = sae
        self.features = torch.as_tensor(features, dtype=torch.long).reshape(-1)
        self.mode = mode
        self.references = references
        self.seed = seed

    def replacement(self, f_sel: torch.Tensor) -> torch.Tensor:
        """The unbound hook's replacement values (zero ablation)."""
        if self.mode == "zero":
            return torch.zeros_like(f_sel)
        raise RuntimeError(
            f"{self.mode} ablation depends on the batch and segment it runs on: install "
            "`ablation.at(batch, segment)` (e.g. through splice.condition), not the ablation "
            "itself"
        )

    def at(self, batch, segment: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """The hook for the pass `segment` ("prefix" | "question" | "answer", scoring.SEGMENTS)
        of `batch` (a scoring.AnswerBatch)."""
        if self.mode == "zero" or len(self.features) == 0:
            return self
        refs, feats = self.references, self.features
        if self.mode == "mean":
            target = refs.mean_at(batch, segment, feats)
            return lambda resid: self.splice(resid, lambda f_sel: target.to(f_sel).expand_as(f_sel))
        donors = refs.donors_at(batch, segment, self.seed)
        if donors is None:
            return _unchanged
        donor, missing = donors

        def replace_from_donor(resid):
            d = torch.where(missing[..., None].to(resid.device), resid, donor.to(resid))
            f_donor = encode(self.sae, d.to(self.sae.W_dec.dtype))[..., self.features]
            return self.splice(resid, lambda f_sel: f_donor.to(f_sel))

        return replace_from_donor

    def splice(
        self, resid: torch.Tensor, replace: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """resid + (replace(f_S) - f_S) @ W_dec[S]: the SAE spliced in, error term kept."""
        if len(self.features) == 0:
            return resid
        f = encode(self.sae, resid.to(self.sae.W_dec.dtype))
        f_sel = f[..., self.features]
        delta = (replace(f_sel) - f_sel) @ self.sae.W_dec[self.features]
        return resid + delta.to(resid.dtype)

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        return self.splice(resid, self.replacement)


def _unchanged(resid: torch.Tensor) -> torch.Tensor:
    return resid


@contextmanager
def spliced(model, layer: int, ablation: Callable[[torch.Tensor], torch.Tensor]):
    """Within the block, the SAE at `layer` runs in the model with `ablation` applied."""
    with patch_residual(model, layer, ablation):
        yield


def condition(model, layer: int, ablation) -> Callable:
    """A scoring.Condition: the SAE at `layer` spliced in with `ablation`, bound to each pass.

    score_conditions calls it as condition(batch, segment) for every pass it runs under the
    condition; an ablation with an `at` method (FeatureAblation, WithErrorAblated) is bound
    there (mean and resample need the benchmark, the segment and the rows' examples; zero
    ablation binds to itself), any other hook (DirectionControl, ErrorAblation,
    AttributionProbe, any resid -> resid function) is installed as it is.

    The returned function also carries `layer` and `hook` (hook(batch, segment): the
    resid -> resid function it installs there), so that the scorer may stack conditions
    that have them: several conditions' answer passes run as one, each hook applied to its
    own copy of the rows (scoring/stacked.py)."""
    bind = getattr(ablation, "at", None)

    def hook(batch, segment: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return bind(batch, segment) if bind is not None else ablation

    def cond(batch, segment: str):
        return spliced(model, layer, hook(batch, segment))

    cond.layer, cond.hook = layer, hook
    return cond


class WithErrorAblated:
    """`ablation` (the features) with the SAE error term ablated too, in `mode`:

        resid' = x_hat(f') + e'      (e = x - x_hat(f), the SAE error term at the position)

    zero: e' = 0; mean: e' = the benchmark's mean error over the select tokens of the same
    position type; resample: e' = the error of the donor example at the aligned position
    (the same donor as the features', drawn with `ablation.seed`; the few-shot block keeps
    its own error). `references`: causal.references.AblationReferences (mean, resample).
    """

    def __init__(self, ablation, sae, mode: str = "zero", references=None):
        if mode not in MODES:
            raise ValueError(f"error ablation mode {mode!r}: expected one of {MODES}")
        if mode != "zero" and not isinstance(references, AblationReferences):
            raise ValueError(
                f"{mode} ablation of the error term needs references (an AblationReferences), "
                f"got {type(references).__name__}"
            )
        self.ablation, self.sae, self.mode, self.references = ablation, sae, mode, references
        self.seed = getattr(ablation, "seed", 0)

    def error(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.sae.W_dec.dtype)
        return x - self.sae.decode(encode(self.sae, x))

    def at(self, batch, segment: str) -> Callable[[torch.Tensor], torch.Tensor]:
        bind = getattr(self.ablation, "at", None)
        inner = bind(batch, segment) if bind is not None else self.ablation
        if self.mode == "zero":
            return lambda resid: self._swap(resid, inner(resid), None)
        if self.mode == "mean":
            target = self.references.mean_at(batch, segment)
            return lambda resid: self._swap(
                resid, inner(resid), target.to(resid.device).expand(*resid.shape)
            )
        donors = self.references.donors_at(batch, segment, self.seed)
        if donors is None:
            return inner
        donor, missing = donors

        def hook(resid):
            d = torch.where(missing[..., None].to(resid.device), resid, donor.to(resid))
            return self._swap(resid, inner(resid), self.error(d))

        return hook

    def _swap(self, resid, out, new_error):
        """`out` (the features' splice of `resid`, error kept) with the error term replaced."""
        e = self.error(resid)
        swapped = out.to(e.dtype) - e + (0 if new_error is None else new_error.to(e.dtype))
        return swapped.to(resid.dtype)

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        if self.mode != "zero":
            raise RuntimeError(
                f"{self.mode} ablation of the error term depends on the batch and segment: install "
                f"`.at(batch, segment)` (e.g. through splice.condition)"
            )
        return self._swap(resid, self.ablation(resid), None)


class AttributionProbe:
    """Splice that exposes the SAE features as a leaf tensor for attribution patching.

    The forward value is unchanged (x + (f_leaf - f) @ W_dec with f_leaf == f), but the
    gradient of a metric with respect to every feature is available after backward.
    """

    def __init__(self, sae):
        self.sae = sae
        self.features: torch.Tensor | None = None
        self.resid: torch.Tensor | None = None  # the residual it last saw (detached)

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        self.resid = resid.detach()
        with torch.no_grad():
            f = encode(self.sae, resid.detach().to(self.sae.W_dec.dtype))
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
        x_hat = self.sae.decode(encode(self.sae, resid.to(self.sae.W_dec.dtype)))
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
        f = encode(self.sae, resid.to(self.sae.W_dec.dtype))[..., self.features]
        size = (f @ self.sae.W_dec[self.features]).norm(dim=-1, keepdim=True)
        return resid - (size * self.direction.to(size)).to(resid.dtype)
