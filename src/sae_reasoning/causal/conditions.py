"""The ablations scored on the held-out split for one SAE, each with its role.

candidate           each top feature alone, in every mode
control             random live features alone, the same way (their false positives
                    are counted under the same procedure as the candidates')
null                more random live features alone: the null distribution of |Δ| a
                    feature must exceed to be called important
                    (controls, null and random sets: features that fire where the
                    ablations act on the select split, as every candidate does)
top_k_set           the top-K candidates together (zero ablation)
random_set          K random live features together
random_direction    a norm-matched random residual direction in place of the top-K set
circuit_*           the circuit and its complement, error term kept or ablated
all_features*       every feature (zero, and the circuit's mode; with the error term too)
error_term          the SAE error term alone
splice_identity     the SAE spliced in with nothing ablated (must change nothing)
"""

from __future__ import annotations

import torch

from sae_reasoning.causal.selection import Draws
from sae_reasoning.causal.splice import (
    DirectionControl,
    ErrorAblation,
    FeatureAblation,
    WithErrorAblated,
    condition,
)


class ConditionSet:
    """name -> Condition for score_conditions, and name -> {feature, mode, role}."""

    def __init__(self, model, layer: int):
        self.model, self.layer = model, layer
        self.conditions: dict = {}
        self.meta: dict[str, dict] = {}

    def add(
        self, name: str, ablation, *, feature: int = -1, mode: str = "zero", role: str = ""
    ) -> None:
        self.conditions[name] = condition(self.model, self.layer, ablation)
        self.meta[name] = {"feature": feature, "mode": mode, "role": role}


def build_conditions(
    model,
    layer: int,
    sae,
    draws: Draws,
    circuit: list[int],
    *,
    modes,
    circuit_mode: str,
    references,
    n_directions: int,
    seed: int,
) -> ConditionSet:
    cs = ConditionSet(model, layer)
    d_sae = sae.W_dec.shape[0]

    def ablate(feats, mode, s=seed):
        return FeatureAblation(sae, feats, mode, references=references, seed=s)

    for role, feats in (
        ("candidate", draws.candidates),
        ("control", draws.controls),
        ("null", draws.null),
    ):
        for feat in feats:
            for mode in modes:
                cs.add(
                    f"{mode}:{feat}",
                    ablate([feat], mode, seed + feat),
                    feature=feat,
                    mode=mode,
                    role=role,
                )
    if draws.candidates:
        cs.add("zero:top_k", ablate(draws.candidates, "zero"), role="top_k_set")
        for j in range(n_directions):
            cs.add(
                f"direction:{j}",
                DirectionControl(sae, draws.candidates, seed=seed + j),
                mode="direction",
                role="random_direction",
            )
    for j, feats in enumerate(draws.random_sets):
        cs.add(f"zero:random_set{j}", ablate(feats, "zero"), role="random_set")
    everything = torch.arange(d_sae)
    cm = circuit_mode
    if circuit:
        outside = sorted(set(range(d_sae)) - set(circuit))
        cs.add("circuit:ablated", ablate(circuit, cm), mode=cm, role="circuit_ablated")
        cs.add("circuit:only", ablate(outside, cm), mode=cm, role="circuit_only")
        cs.add(
            "circuit:only+error",
            WithErrorAblated(ablate(outside, cm), sae, cm, references),
            mode=cm,
            role="circuit_only_error_ablated",
        )
    cs.add("zero:all", ablate(everything, "zero"), role="all_features")
    if cm != "zero":
        cs.add(f"{cm}:all", ablate(everything, cm), mode=cm, role="all_features_circuit_mode")
    cs.add(
        f"{cm}:all+error",
        WithErrorAblated(ablate(everything, cm), sae, cm, references),
        mode=cm,
        role="all_features_and_error",
    )
    cs.add("error:zero", ErrorAblation(sae), mode="zero", role="error_term")
    cs.add("splice:none", ablate([], "zero"), mode="none", role="splice_identity")
    return cs
