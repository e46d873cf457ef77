"""Which SAE features the model uses to answer: the causal study of one model.

1. What is analysed (selection.py): benchmarks where the clean model is above chance
   (exact binomial test against the best constant answer), all or only correctly answered
   examples; `select` split for choosing features, `heldout` split for measuring them.
2. Ablation references from the `select` split (references.py): per benchmark and
   position type, the features' mean and, for resampling, aligned rows of other examples.
3. Attribution patching on `select` (attribution.py) ranks every feature.
4. Circuit search on `select` (circuits.py): the fewest features, in estimate order,
   whose exact ablation recovers a fraction of the whole SAE's effect.
5. Exact ablation on `heldout` (conditions.py): candidates, controls, a null of random
   live features, sets, directions, circuit, all features, error term; only the blocks
   above the SAE's layer run.
6. Effects, tests and importance calls (effects.py, stats.py); summary and ranking
   (summary.py); top-activating contexts and the token-injection control of the top
   features (contexts.py, token_injection.py).

Where ablations act (`positions`, scoring.py): `answer`, the last prompt token and the
answer tokens; or `all`, every position of few-shot block, question and answer except
position 0 (when the massive-activation rule leaves it out of the SAE's training data).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from sae_reasoning.activations.store import ActivationSet, MassiveActivationFilter
from sae_reasoning.causal.attribution import attribution_terms, estimate
from sae_reasoning.causal.circuits import find_circuit
from sae_reasoning.causal.conditions import build_conditions, draw_features
from sae_reasoning.causal.effects import add_calls, condition_effects
from sae_reasoning.causal.references import AblationReferences
from sae_reasoning.benchmarks.prompts import clusters as template_clusters
from sae_reasoning.causal.selection import EXAMPLES, choose_benchmarks, correct_only, subset
from sae_reasoning.causal.summary import hook_summary, ranking_of
from sae_reasoning.chance import baseline_vs_chance
from sae_reasoning.models.hooks import parse_hook_point
from sae_reasoning.models.loading import LanguageModel
from sae_reasoning.scoring import POSITIONS, EncodedBenchmark, encode_prompts, score_conditions

log = logging.getLogger(__name__)


@dataclass
class CausalConfig:
    top_k: int = 12                     # candidates ablated exactly
    n_random_controls: int = 6          # random live features ablated alone, as a control
    n_random_sets: int = 3              # draws of top_k random live features ablated together
    n_random_directions: int = 3        # norm-matched random directions (control for the top-K set)
    n_null_features: int = 40           # random live features alone: the null |Δ| an important feature exceeds
    null_quantile: float = 0.95         # ... beyond this quantile of the null's |Δ|
    alpha: float = 0.05                 # BH level (candidates pooled over modes, benchmarks, endpoints)
    require_above_chance: bool = True   # analyse only benchmarks the clean model solves above chance
    chance_alpha: float = 0.05          # level of the exact binomial test against chance
    examples: str = "all"               # all | correct (only examples the clean model answers correctly)
    modes: tuple[str, ...] = ("zero", "resample")
    positions: str = "answer"           # where ablations act: answer (last prompt token + answer) | all
    max_examples_per_benchmark: int = 60    # per split
    batch_size: int = 16
    stats_tokens: int = 20000           # captured tokens encoded for firing rates (alive features)
    n_boot: int = 2000                  # bootstrap resamples per CI
    circuit_fraction: float = 0.8       # share of the whole-SAE effect a circuit must recover
    circuit_refine: int = 4             # sizes checked between the last failing and first passing size
    circuit_examples_per_benchmark: int = 20    # select examples the circuit search runs on (cost)
    circuit_mode: str = "mean"          # ablation of features outside/inside the circuit (Marks et al.: mean)
    circuit_sparse_fraction: float = 0.02   # a circuit above this share of alive features is "not sparse"
    n_context_features: int = 10        # top features whose top-activating contexts are listed
    n_contexts: int = 5
    context_window: int = 12
    token_injection: dict = field(default_factory=dict)   # token_injection() keyword arguments
    seed: int = 0
    exclude: MassiveActivationFilter = field(default_factory=MassiveActivationFilter)

    @classmethod
    def from_params(cls, params: dict) -> "CausalConfig":
        p = dict(params)
        exclude = p.pop("massive_activations", None)
        cfg = cls(**{k: (tuple(v) if k == "modes" else v) for k, v in p.items()})
        if exclude is not None:
            cfg.exclude = MassiveActivationFilter(**exclude)
        if cfg.examples not in EXAMPLES:
            raise ValueError(f"causal.examples {cfg.examples!r}: expected one of {EXAMPLES}")
        if cfg.positions not in POSITIONS:
            raise ValueError(f"causal.positions {cfg.positions!r}: expected one of {POSITIONS}")
        if not 0 < cfg.circuit_sparse_fraction < 1:
            raise ValueError(f"causal.circuit_sparse_fraction {cfg.circuit_sparse_fraction!r}: expected a share in (0, 1)")
        return cfg

    def scoring(self) -> dict:
        """Where ablations act, as score_conditions' keyword arguments. Position 0 is left
        clean with `all` exactly when SAE training leaves it out (massive_activations)."""
        return {"positions": self.positions, "exclude_first": self.exclude.exclude_first_position}


@torch.no_grad()
def feature_statistics(sae, activations: ActivationSet, hook: str, cfg: CausalConfig) -> dict:
    """Firing rates over captured tokens (which features are alive)."""
    fired, n = None, 0
    for batch in activations.iter_batches(hook, 1024, shuffle=True, seed=cfg.seed, exclude=cfg.exclude):
        f = sae.encode(batch.to(sae.W_dec))[: cfg.stats_tokens - n]
        fired = (f > 0).sum(0).cpu() + (0 if fired is None else fired)
        n += len(f)
        if n >= cfg.stats_tokens:
            break
    return {"firing_rate": fired.float() / max(n, 1), "n_tokens": n}


def statistics_of(f: torch.Tensor) -> dict:
    """The same statistics from feature activations already at hand [tokens, d_sae]."""
    return {"firing_rate": (f > 0).float().mean(0), "n_tokens": len(f)}


def analyse_hook(lm: LanguageModel, sae, hook: str, select: list[EncodedBenchmark],
                 heldout: list[EncodedBenchmark], stats: dict, cfg: CausalConfig, *,
                 references: AblationReferences | None = None, clusters: pd.Series | None = None):
    """(effects table, ranking list, summary dict, circuit dict) for one SAE.

    clusters: prompts row -> cluster label (selection.cluster_labels); None: every example its own.
    """
    layer = parse_hook_point(hook)
    if references is None:
        references = AblationReferences.build(lm, sae, layer, select, batch_size=cfg.batch_size, **cfg.scoring())
    if clusters is None:
        rows = sorted(e.row for b in heldout for e in b.examples)
        clusters = pd.Series([f"row{r}" for r in rows], index=rows)
    terms = attribution_terms(lm, sae, layer, select, cfg.batch_size, **cfg.scoring())
    est = estimate(terms, "zero", {})
    alive = stats["firing_rate"] > 0
    order = torch.argsort(torch.where(alive, est, torch.full_like(est, float("inf"))))
    # Controls, null and random sets come from the features that fire where the ablations act
    # (select split): a feature silent there has Δ = 0 exactly and would make the null vacuous.
    active = alive & (references.pooled_mean() > 0)
    draws = draw_features([int(i) for i in order[: int(alive.sum())]], active.numpy(), top_k=cfg.top_k,
                          n_controls=cfg.n_random_controls, n_null=cfg.n_null_features,
                          n_sets=cfg.n_random_sets, seed=cfg.seed)
    cm = cfg.circuit_mode
    est_c = estimate(terms, cm, {"mean": references.pooled_mean()} if cm == "mean" else {})
    # Circuit nodes by |estimate|, as Marks et al. select nodes by |indirect effect|.
    magnitude = torch.where(alive, est_c.abs(), torch.full_like(est_c, -1.0))
    circuit_order = [int(i) for i in torch.argsort(magnitude, descending=True)[: int(alive.sum())]]
    search = find_circuit(lm, sae, layer, subset(select, "select", cfg.circuit_examples_per_benchmark, cfg.seed),
                          circuit_order, est_c, references, fraction=cfg.circuit_fraction,
                          refine=cfg.circuit_refine, mode=cm, batch_size=cfg.batch_size, scoring=cfg.scoring())

    conds = build_conditions(lm.model, layer, sae, draws, search.features, modes=cfg.modes, circuit_mode=cm,
                             references=references, n_directions=cfg.n_random_directions, seed=cfg.seed)
    t0 = time.time()
    scores = score_conditions(lm, heldout, conds.conditions, batch_size=cfg.batch_size,
                              progress=f"ablations {hook}", start_layer=layer, **cfg.scoring())
    seconds = time.time() - t0
    parts = []
    for name, df in scores.items():
        if name == "clean":
            continue
        s = condition_effects(scores["clean"], df, clusters, n_boot=cfg.n_boot, seed=cfg.seed)
        meta = conds.meta[name]
        feat = meta["feature"]
        parts.append(s.assign(hook_point=hook, condition=name, **meta,
                              attribution=float(est[feat]) if feat >= 0 else np.nan,
                              firing_rate=float(stats["firing_rate"][feat]) if feat >= 0 else np.nan))
    eff, calls = add_calls(pd.concat(parts, ignore_index=True), len(heldout), alpha=cfg.alpha,
                           null_quantile=cfg.null_quantile)
    cost = {"conditions": len(conds.conditions), "ablation_seconds": seconds,
            "seconds_per_condition": seconds / max(len(conds.conditions), 1),
            "null_seconds": seconds * cfg.n_null_features * len(cfg.modes) / max(len(conds.conditions), 1)}
    summary = hook_summary(eff, scores, draws, search, stats, clusters, cfg, layer=layer, d_sae=sae.W_dec.shape[0],
                           alive=int(alive.sum()), calls=calls, cost=cost, select=select, heldout=heldout)
    summary["active_at_ablated_positions"] = int(active.sum())
    ranking = ranking_of(eff, search.features)
    return eff, ranking, summary, {**summary["circuit"], "features": [
        {"feature": f, "attribution": float(est_c[f]), "attribution_zero": float(est[f]),
         "firing_rate": float(stats["firing_rate"][f]), "order": i + 1,
         "exact_delta_logprob": next((r["delta_logprob"] for r in ranking if r["feature"] == f), None)}
        for i, f in enumerate(search.features)]}


def select_examples(encoded: list[EncodedBenchmark], prompts: pd.DataFrame, baseline: pd.DataFrame | None,
                    cfg: CausalConfig) -> tuple[list[EncodedBenchmark], list[EncodedBenchmark], dict]:
    """(select, heldout, selection facts): the benchmarks and examples the study analyses."""
    if not subset(encoded, "select", 1, cfg.seed) or not subset(encoded, "heldout", 1, cfg.seed):
        raise ValueError("causal analysis needs prompts in both splits 'select' and 'heldout'")
    chance = baseline_vs_chance(baseline, prompts, cfg.chance_alpha) if baseline is not None else None
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
    facts = {"chance": chance, "analysed": sorted(names), "skipped": skipped, "examples": cfg.examples,
             "require_above_chance": cfg.require_above_chance}
    return select, heldout, facts


def run_causal_analysis(lm: LanguageModel, saes: dict, prompts: pd.DataFrame, activations: ActivationSet,
                        cfg: CausalConfig, baseline: pd.DataFrame | None = None):
    """Returns (feature_effects, ranking, summary, circuits, contexts, selection) over every SAE hook point."""
    from sae_reasoning.causal.contexts import top_activating_contexts
    from sae_reasoning.causal.token_injection import token_injection

    encoded = encode_prompts(lm.tokenizer, prompts)
    select, heldout, selection = select_examples(encoded, prompts, baseline, cfg)
    effects, ranking, summary, circuits, contexts = [], {}, {}, {}, {}
    if not select:
        log.warning("causal %s: no benchmark to analyse (%s)", lm.name, selection["skipped"])
        return pd.DataFrame(), ranking, summary, circuits, contexts, selection
    clusters = template_clusters(prompts.reset_index(drop=True))     # prompts row -> cluster
    for hook, sae in saes.items():
        sae = sae.to(lm.device)
        layer = parse_hook_point(hook)
        stats = feature_statistics(sae, activations, hook, cfg)
        refs = AblationReferences.build(lm, sae, layer, select, batch_size=cfg.batch_size, **cfg.scoring())
        eff, ranking[hook], summary[hook], circuits[hook] = analyse_hook(
            lm, sae, hook, select, heldout, stats, cfg, references=refs, clusters=clusters)
        effects.append(eff)
        feats = [r["feature"] for r in ranking[hook]][: cfg.n_context_features]
        feats += [f["feature"] for f in circuits[hook]["features"] if f["feature"] not in feats][
            : max(0, cfg.n_context_features - len(feats))]
        ctx = top_activating_contexts(sae, activations, hook, feats, lm.tokenizer, n=cfg.n_contexts,
                                      window=cfg.context_window, exclude=cfg.exclude)
        contexts[hook] = {str(f): c for f, c in ctx.items()}
        injected = token_injection(lm, sae, layer, ctx, seed=cfg.seed, **cfg.token_injection)
        summary[hook]["token_injection"] = {str(f): v for f, v in injected.items()}
        for r in ranking[hook]:
            r["token_driven"] = injected.get(r["feature"], {}).get("token_driven")
        for node in circuits[hook]["features"]:
            top = ctx.get(node["feature"])
            node["top_context"] = top[0]["text"] if top else None
    return pd.concat(effects, ignore_index=True), ranking, summary, circuits, contexts, selection
