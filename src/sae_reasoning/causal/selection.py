"""What the causal stage analyses: which benchmarks, which examples, which features.

- A benchmark is analysed only where the clean model is above chance (chance.py: exact
  binomial test against the best constant answer), unless `require_above_chance` is off:
  ablating features of a model that does not solve the task measures floor effects.
- `examples: correct` keeps only the examples the clean model answers correctly (per
  baseline scores): "which features does it use when it solves the problem".
- Features are chosen on the `select` split (choose_features): candidates by attribution
  estimate, random controls, null features and random sets, and the circuit; their effects
  are then measured on `heldout`.
Examples that share a template (GSM8K-style problems instantiated from one template) are
one cluster for the tests (benchmarks.prompts.clusters): they resample clusters, not rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from sae_reasoning.causal.attribution import attribution_terms, estimate
from sae_reasoning.causal.circuits import CircuitSearch, find_circuit
from sae_reasoning.causal.references import AblationReferences, ReferenceCollector
from sae_reasoning.chance import baseline_vs_chance
from sae_reasoning.scoring import EncodedBenchmark

EXAMPLES = ("all", "correct")


def subset(
    encoded: list[EncodedBenchmark], split: str, cap: int, seed: int
) -> list[EncodedBenchmark]:
    """Each benchmark's examples of `split`, at most `cap` of them (a seeded sample)."""
    rng = np.random.default_rng(seed)
    out = []
    for b in encoded:
        ex = [e for e in b.examples if e.split == split]
        if len(ex) > cap:
            ex = [ex[i] for i in sorted(rng.choice(len(ex), cap, replace=False))]
        if ex:
            out.append(EncodedBenchmark(b.name, b.prefix, ex))
    return out


def choose_benchmarks(
    encoded: list[EncodedBenchmark], chance: dict[str, dict] | None, require_above_chance: bool
) -> tuple[list[EncodedBenchmark], dict[str, str]]:
    """(benchmarks to analyse, {skipped benchmark: reason})."""
    keep, skipped = [], {}
    for b in encoded:
        c = (chance or {}).get(b.name)
        if require_above_chance and c is None:
            skipped[b.name] = "no baseline scores for it"
        elif require_above_chance and not c["above_chance"]:
            skipped[b.name] = (
                f"clean accuracy {c['accuracy']:.1%} is not above chance {c['chance']:.1%} "
                f"(exact binomial test p = {c['p_value']:.2g}, alpha {c['alpha']})"
            )
        else:
            keep.append(b)
    return keep, skipped


def correct_only(encoded: list[EncodedBenchmark], baseline: pd.DataFrame) -> list[EncodedBenchmark]:
    """Only the examples (by prompts row) that the clean model answers correctly."""
    ok = set(baseline.loc[baseline["correct"].astype(bool), "row"].astype(int))
    out = []
    for b in encoded:
        ex = [e for e in b.examples if e.row in ok]
        if ex:
            out.append(EncodedBenchmark(b.name, b.prefix, ex))
    return out


def select_examples(
    encoded: list[EncodedBenchmark], prompts: pd.DataFrame, baseline: pd.DataFrame | None, cfg
) -> tuple[list[EncodedBenchmark], list[EncodedBenchmark], dict]:
    """(select, heldout, selection facts): the benchmarks and examples the study analyses."""
    if not subset(encoded, "select", 1, cfg.seed) or not subset(encoded, "heldout", 1, cfg.seed):
        raise ValueError("causal analysis needs prompts in both splits 'select' and 'heldout'")
    chance = (
        baseline_vs_chance(baseline, prompts, cfg.chance_alpha) if baseline is not None else None
    )
    if cfg.require_above_chance and baseline is None:
        raise ValueError("causal.require_above_chance needs the model's baseline scores")
    kept, skipped = choose_benchmarks(encoded, chance, cfg.require_above_chance)
    if cfg.examples == "correct":
        if baseline is None:
            raise ValueError("causal.examples = correct needs the model's baseline scores")
        kept = correct_only(kept, baseline)
    select = subset(kept, "select", cfg.max_examples_per_benchmark, cfg.seed)
    heldout = subset(kept, "heldout", cfg.max_examples_per_benchmark, cfg.seed)
    # A benchmark is analysed only with examples in both splits.
    names = {b.name for b in select} & {b.name for b in heldout}
    for b in kept:
        if b.name not in names:
            skipped[b.name] = f"no {cfg.examples} examples left in both splits"
    select = [b for b in select if b.name in names]
    heldout = [b for b in heldout if b.name in names]
    facts = {
        "chance": chance,
        "analysed": sorted(names),
        "skipped": skipped,
        "examples": cfg.examples,
        "require_above_chance": cfg.require_above_chance,
    }
    return select, heldout, facts


@dataclass
class Draws:
    """The features each role tests, drawn once per SAE (seeded)."""

    candidates: list[int]
    controls: list[int]
    null: list[int]
    random_sets: list[list[int]] = field(default_factory=list)


def draw_features(
    live_order: list[int],
    eligible: np.ndarray,
    *,
    top_k: int,
    n_controls: int,
    n_null: int,
    n_sets: int,
    seed: int,
) -> Draws:
    """Candidates: the top of the attribution order. Controls and null: disjoint random
    eligible features (live, and firing where the ablations act) outside the candidates.
    Random sets: K eligible features each."""
    candidates = live_order[:top_k]
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.flatnonzero(eligible), candidates)
    picked = [int(i) for i in rng.permutation(pool)[: n_controls + n_null]]
    live = np.flatnonzero(eligible)
    sets = (
        [
            [int(i) for i in rng.choice(live, min(len(candidates), len(live)), replace=False)]
            for _ in range(n_sets)
        ]
        if candidates
        else []
    )
    return Draws(candidates, picked[:n_controls], picked[n_controls:], sets)


@dataclass
class FeatureChoice:
    """One SAE's features to ablate on heldout, chosen on the select split."""

    draws: Draws  # candidates, controls, null features, random sets
    search: CircuitSearch  # the circuit
    estimate: torch.Tensor  # [d_sae] attribution estimate of zero ablation
    circuit_estimate: torch.Tensor  # [d_sae] ... of ablation in the circuit's mode
    alive: torch.Tensor  # [d_sae] bool: fires on the captured tokens
    active: torch.Tensor  # [d_sae] bool: alive and firing where the ablations act


def select_pass(
    lm, sae, layer: int, select: list[EncodedBenchmark], cfg
) -> tuple[tuple[torch.Tensor, torch.Tensor], AblationReferences]:
    """(attribution terms, ablation references), both from one pass over the select split:
    each batch's attribution pass also gives the clean residual the references are built from
    (the probe leaves the forward value unchanged), where building them alone would run the
    select examples' contexts and answer passes a second time."""
    collect = ReferenceCollector(sae, layer, select, **cfg.scoring())
    terms = attribution_terms(
        lm, sae, layer, collect.benchmarks, cfg.batch_size, observe=collect.add, **cfg.scoring()
    )
    return terms, collect.done()


def choose_features(
    lm,
    sae,
    layer: int,
    select: list[EncodedBenchmark],
    stats: dict,
    references: AblationReferences,
    cfg,
    terms: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> FeatureChoice:
    """Attribution on `select` ranks every feature; candidates, controls and the circuit follow.

    terms: attribution_terms on `select`, where already computed (select_pass)."""
    if terms is None:
        terms = attribution_terms(lm, sae, layer, select, cfg.batch_size, **cfg.scoring())
    est = estimate(terms, "zero", {})
    alive = stats["firing_rate"] > 0
    order = torch.argsort(torch.where(alive, est, torch.full_like(est, float("inf"))))
    # Controls, null and random sets come from the features that fire where the ablations act
    # (select split): a feature silent there has Δ = 0 exactly and would make the null vacuous.
    active = alive & (references.pooled_mean() > 0)
    draws = draw_features(
        [int(i) for i in order[: int(alive.sum())]],
        active.numpy(),
        top_k=cfg.top_k,
        n_controls=cfg.n_random_controls,
        n_null=cfg.n_null_features,
        n_sets=cfg.n_random_sets,
        seed=cfg.seed,
    )
    cm = cfg.circuit_mode
    est_c = estimate(terms, cm, {"mean": references.pooled_mean()} if cm == "mean" else {})
    # Circuit nodes by |estimate|, as Marks et al. select nodes by |indirect effect|.
    magnitude = torch.where(alive, est_c.abs(), torch.full_like(est_c, -1.0))
    circuit_order = [int(i) for i in torch.argsort(magnitude, descending=True)[: int(alive.sum())]]
    search = find_circuit(
        cfg.scorer(lm, layer),
        sae,
        subset(select, "select", cfg.circuit_examples_per_benchmark, cfg.seed),
        circuit_order,
        est_c,
        references,
        fraction=cfg.circuit_fraction,
        refine=cfg.circuit_refine,
        mode=cm,
    )
    return FeatureChoice(draws, search, est, est_c, alive, active)
