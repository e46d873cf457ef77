"""Feature circuits at one SAE: the fewest features that carry the SAE's effect.

With one SAE at one layer, a circuit is a set C of features feeding the answer (there are
no feature-to-feature edges to find inside one layer). Notation of Marks et al. (Sparse
Feature Circuits, 2024), with m the mean gold-answer log-probability and the SAE error
term kept throughout:

  m(M)   nothing ablated (the clean model)
  m(0)   every feature ablated
  m(C)   every feature outside C ablated (only the circuit runs)
  faithfulness  = (m(C)   - m(0)) / (m(M) - m(0))   1: the circuit alone does what the SAE does
  completeness  = (m(M\\C) - m(0)) / (m(M) - m(0))   0: nothing is left once C is ablated

Search: features ordered by the size of their attribution estimate; the circuit is the
top-k for the smallest k whose exact ablation recovers `fraction` of the effect of
ablating the whole SAE. k is found by exact ablation of the top-k for doubling k, then
by searching between the last failing and the first passing size (`refine` evenly spaced
sizes per round, the estimate's own guess in the first) until they are adjacent: the
circuit's size passes, one feature fewer fails, and so does every smaller size checked.
(The recovered share is not monotone in k in general, so sizes never checked below the
last failing one could pass; checking all d_sae sizes would cost d_sae passes.)
Ablation is mean ablation by default, as in Marks et al.: zero-ablating every feature
throws the residual far off its distribution, an effect no small set reproduces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np
import torch

from sae_reasoning.causal.references import AblationReferences
from sae_reasoning.causal.splice import FeatureAblation, condition
from sae_reasoning.scoring import EncodedBenchmark, Scorer

log = logging.getLogger(__name__)


@dataclass
class CircuitSearch:
    features: list[int]  # the circuit, in estimate order
    fraction: float  # target share of the whole-SAE effect
    recovered: float | None  # share reached by ablating the circuit (search split)
    delta_all: float  # effect of ablating every feature (search split)
    checked: dict[int, float]  # size -> exact recovered share
    estimate_size: int | None  # size at which the linear attribution estimate reaches the target
    found: bool


def faithfulness(m_circuit: float, m_model: float, m_empty: float) -> float:
    return (m_circuit - m_empty) / (m_model - m_empty)


def completeness(m_complement: float, m_model: float, m_empty: float) -> float:
    return (m_complement - m_empty) / (m_model - m_empty)


def _sizes_doubling(estimate: int | None, n: int) -> list[int]:
    sizes = {n}
    k = 1
    while k < n:
        sizes.add(k)
        k *= 2
    if estimate:
        sizes.add(min(max(estimate, 1), n))
    return sorted(sizes)


@dataclass(frozen=True)
class _Ablations:
    """Exact ablation of the top k of `order` at one SAE, for any list of sizes k; the
    examples' clean contexts are built once for every round of sizes."""

    scorer: Scorer
    sae: torch.nn.Module
    benchmarks: list[EncodedBenchmark]
    order: list[int]
    references: AblationReferences | None
    mode: str

    @cached_property
    def _batches(self):
        # grouped for the first round's conditions (doubling sizes), the most of any round
        n = len(_sizes_doubling(None, len(self.order))) + 1
        return self.scorer.batches(self.benchmarks, answer_passes=n)

    def deltas(self, sizes, progress: str) -> dict[int, float]:
        """Per size k: mean Δ gold log-prob of ablating the top k (mean/resample from
        `references`, an AblationReferences of the select split)."""
        conds = {
            f"top{k}": condition(
                self.scorer.lm.model,
                self.scorer.layer,
                FeatureAblation(self.sae, self.order[:k], self.mode, references=self.references),
            )
            for k in sizes
        }
        scores = self.scorer.score(self.benchmarks, conds, progress=progress, batches=self._batches)
        clean = scores["clean"]["gold_logprob"].mean()
        return {k: float(scores[f"top{k}"]["gold_logprob"].mean() - clean) for k in sizes}


def find_circuit(
    scorer: Scorer,
    sae,
    benchmarks: list[EncodedBenchmark],
    order: list[int],
    estimate: torch.Tensor,
    references: AblationReferences | None = None,
    *,
    fraction: float = 0.8,
    refine: int = 4,
    mode: str = "zero",
) -> CircuitSearch:
    """Smallest prefix of `order` whose exact ablation recovers `fraction` of the whole SAE's
    effect.

    `scorer`: scores the ablations of the SAE at its layer (scoring.Scorer with that layer;
    where they act and how passes are shared, e.g. CausalConfig.scorer).

    `references`: what mean/resample ablation substitute (AblationReferences of the select
    split, built for the same `positions`); not needed for zero ablation.

    `order`: live features, largest |attribution estimate| first; ablating all of them is
    ablating the whole SAE (dead features never fire).
    """
    n = len(order)
    if n == 0:
        return CircuitSearch([], fraction, None, 0.0, {}, None, False)
    if scorer.layer is None:
        raise ValueError("find_circuit needs a Scorer with the SAE's layer (Scorer(lm, layer))")
    ablate = _Ablations(scorer, sae, benchmarks, order, references, mode)
    deltas = ablate.deltas(_sizes_doubling(None, n), "circuit search")
    delta_all = deltas[n]
    est_size = _estimate_size(estimate, order, fraction, delta_all)
    if delta_all >= 0:
        log.info(
            "ablating the whole SAE does not lower the gold log-prob (%.4f): no circuit to find",
            delta_all,
        )
        return CircuitSearch([], fraction, None, delta_all, {}, est_size, False)
    share = {k: d / delta_all for k, d in deltas.items()}
    hi = _narrow(share, fraction, refine, est_size, ablate, delta_all)
    return CircuitSearch(
        [int(f) for f in order[:hi]],
        fraction,
        float(share[hi]),
        float(delta_all),
        {int(k): float(v) for k, v in sorted(share.items())},
        est_size,
        True,
    )


def _estimate_size(
    estimate: torch.Tensor, order: list[int], fraction: float, delta_all: float
) -> int | None:
    """The estimate's own guess: the first k whose summed (linear) estimate reaches the
    target share of the exact whole-SAE effect (None when it never does)."""
    cumulative = np.cumsum(estimate[torch.as_tensor(order)].double().numpy())
    reached = np.flatnonzero(cumulative <= fraction * delta_all) if delta_all < 0 else []
    return int(reached[0]) + 1 if len(reached) else None


def _narrow(
    share: dict[int, float],
    fraction: float,
    refine: int,
    est_size: int | None,
    ablate: _Ablations,
    delta_all: float,
) -> int:
    """Check sizes between the last failing and the first passing size until they are
    adjacent (hi passes, hi - 1 fails); `share` gains every size checked. Returns hi."""
    hi = min(k for k in share if share[k] >= fraction)
    lo = max([k for k in share if k < hi], default=0)
    rounds = 0
    while hi - lo > 1:
        between = {int(round(x)) for x in np.linspace(lo, hi, refine + 2)[1:-1]} | {(lo + hi) // 2}
        if rounds == 0 and est_size is not None and lo < est_size < hi:
            between.add(est_size)
        between = sorted(between - {lo, hi})
        more = ablate.deltas(between, f"circuit sizes {lo + 1}..{hi - 1}")
        share.update({k: d / delta_all for k, d in more.items()})
        hi = min(k for k in share if share[k] >= fraction)
        lo = max([k for k in share if k < hi], default=0)
        rounds += 1
    return hi


ANSWER = "answer"


def circuit_graph(model: str, circuits: dict[str, dict]) -> nx.DiGraph:
    """One graph per model: feature nodes (per hook point) -> the answer metric node.

    circuits: hook point -> {"features": [{feature, attribution, ...}], **graph-level facts}.
    Edge weight = the feature's attribution estimate (estimated change in gold log-prob
    if the feature is ablated); a single-layer circuit has no feature -> feature edges.
    """
    g = nx.DiGraph(
        model=model,
        metric="mean gold-answer log-probability",
        note="features of one SAE feed the answer; ablations keep the SAE error term",
    )
    g.add_node(ANSWER, kind="metric", label="gold answer log-prob")
    for hook, c in circuits.items():
        g.graph[hook] = {k: v for k, v in c.items() if k != "features"}
        for node in c["features"]:
            nid = f"{hook}/{node['feature']}"
            g.add_node(nid, kind="feature", hook_point=hook, **node)
            g.add_edge(nid, ANSWER, weight=float(node["attribution"]))
    return g


def circuit_quality(
    d_only, d_ablated, d_empty, clusters, *, n_boot: int = 2000, seed: int = 0
) -> dict:
    """Faithfulness and completeness on per-example Δ gold log-prob (condition - clean), with
    bootstrap 95% CIs over examples (template clusters resampled whole).

    d_only: features outside the circuit ablated (m(C)); d_ablated: the circuit ablated
    (m(M \\ C)); d_empty: the empty circuit (m(0)). m(M) = 0 in these units. Both ratios
    share the denominator m(M) - m(0) = -mean(d_empty); where its CI contains 0 the
    ratios are meaningless and withheld, with the reason.
    """
    from sae_reasoning.causal.stats import cluster_sums

    d = np.stack([np.asarray(x, float) for x in (d_only, d_ablated, d_empty)])  # [3, n]
    sums, sizes = cluster_sums(d, clusters)  # [3, G], [G]
    idx = np.random.default_rng(seed).integers(0, len(sizes), size=(n_boot, len(sizes)))
    means = (sums[:, idx].sum(-1) / sizes[idx].sum(-1)).T  # [n_boot, 3]
    denom, denom_b = -d[2].mean(), -means[:, 2]
    lo, hi = np.quantile(denom_b, [0.025, 0.975])
    out = {"denominator": float(denom), "denominator_ci": [float(lo), float(hi)]}
    if lo <= 0 <= hi:
        reason = (
            f"withheld: the denominator m(M) - m(0) = {denom:+.3f} has a 95% CI "
            f"[{lo:+.3f}, {hi:+.3f}] that contains 0"
        )
        return {
            **out,
            "faithfulness": None,
            "faithfulness_ci": None,
            "completeness": None,
            "completeness_ci": None,
            "withheld": reason,
        }
    for name, i in (("faithfulness", 0), ("completeness", 1)):
        point = (d[i].mean() - d[2].mean()) / denom
        boot = (means[:, i] - means[:, 2]) / denom_b
        out[name] = float(point)
        out[f"{name}_ci"] = [float(x) for x in np.quantile(boot, [0.025, 0.975])]
    return {**out, "withheld": None}
