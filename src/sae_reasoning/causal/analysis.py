"""Which SAE features the model uses to answer: the causal study of one model.

Per SAE (analyse_hook), four steps, each in the module named for it:
1. select (selection.py): the benchmarks where the clean model is above chance (exact
   binomial test against the best constant answer), all or only correctly answered
   examples; `select` split for choosing features, `heldout` split for measuring them.
   On `select`: ablation references (references.py: per benchmark and position type, the
   features' mean and, for resampling, aligned rows of other examples), attribution
   patching ranking every feature (attribution.py), candidates and controls, and the
   circuit search (circuits.py: the fewest features, in estimate order, whose exact
   ablation recovers a fraction of the whole SAE's effect).
2. build conditions (conditions.py): candidates, controls, a null of random live
   features, sets, directions, circuit, all features, error term.
3. score (measure.py): one scoring sweep over the conditions on `heldout` (only the
   blocks above the SAE's layer run); effects, tests and importance calls (effects.py,
   stats.py).
4. summarise (summary.py): ranking and summary; then top-activating contexts and the
   token-injection control of the top features (contexts.py, token_injection.py).

Where ablations act (`positions`, scoring): `answer`, the last prompt token and the
answer tokens; or `all`, every position of few-shot block, question and answer except
position 0 (when the massive-activation rule leaves it out of the SAE's training data).
"""

from __future__ import annotations

import logging

import pandas as pd
import torch

from sae_reasoning.activations.store import ActivationSet
from sae_reasoning.benchmarks.prompts import clusters as template_clusters
from sae_reasoning.causal.conditions import build_conditions
from sae_reasoning.causal.config import CausalConfig
from sae_reasoning.causal.contexts import top_activating_contexts
from sae_reasoning.causal.measure import measure
from sae_reasoning.causal.references import AblationReferences
from sae_reasoning.causal.selection import choose_features, select_examples, select_pass
from sae_reasoning.causal.summary import summarise
from sae_reasoning.causal.token_injection import token_injection
from sae_reasoning.scoring import EncodedBenchmark, LanguageModel, encode_prompts, parse_hook_point

log = logging.getLogger(__name__)

__all__ = [
    "CausalConfig",
    "analyse_hook",
    "feature_statistics",
    "run_causal_analysis",
    "select_examples",
    "statistics_of",
]


@torch.no_grad()
def feature_statistics(sae, activations: ActivationSet, hook: str, cfg: CausalConfig) -> dict:
    """Firing rates over captured tokens (which features are alive)."""
    fired, n = None, 0
    for batch in activations.iter_batches(
        hook, 1024, shuffle=True, seed=cfg.seed, exclude=cfg.exclude
    ):
        f = sae.encode(batch.to(sae.W_dec))[: cfg.stats_tokens - n]
        # an int32 sum: an int64 one over a bool [tokens, d_sae] runs ~4x slower on CPU
        counts = (f > 0).sum(0, dtype=torch.int32).cpu().long()
        fired = counts + (0 if fired is None else fired)
        n += len(f)
        if n >= cfg.stats_tokens:
            break
    return {"firing_rate": fired.float() / max(n, 1), "n_tokens": n}


def statistics_of(f: torch.Tensor) -> dict:
    """The same statistics from feature activations already at hand [tokens, d_sae]."""
    return {"firing_rate": (f > 0).float().mean(0), "n_tokens": len(f)}


def analyse_hook(
    lm: LanguageModel,
    sae,
    hook: str,
    select: list[EncodedBenchmark],
    heldout: list[EncodedBenchmark],
    stats: dict,
    cfg: CausalConfig,
    *,
    references: AblationReferences | None = None,
    clusters: pd.Series | None = None,
):
    """(effects table, ranking list, summary dict, circuit dict) for one SAE.

    clusters: prompts row -> cluster label (selection.cluster_labels); None: every example its own.
    """
    layer = parse_hook_point(hook)
    terms = None
    if references is None:
        terms, references = select_pass(lm, sae, layer, select, cfg)
    if clusters is None:
        rows = sorted(e.row for b in heldout for e in b.examples)
        clusters = pd.Series([f"row{r}" for r in rows], index=rows)
    choice = choose_features(lm, sae, layer, select, stats, references, cfg, terms=terms)
    conds = build_conditions(
        lm.model,
        layer,
        sae,
        choice.draws,
        choice.search.features,
        modes=cfg.modes,
        circuit_mode=cfg.circuit_mode,
        references=references,
        n_directions=cfg.n_random_directions,
        seed=cfg.seed,
    )
    measured = measure(cfg.scorer(lm, layer), heldout, conds, hook, choice, stats, clusters, cfg)
    ranking, summary, circuit = summarise(
        measured,
        choice,
        stats,
        clusters,
        cfg,
        layer=layer,
        d_sae=sae.W_dec.shape[0],
        select=select,
        heldout=heldout,
    )
    return measured.effects, ranking, summary, circuit


def run_causal_analysis(
    lm: LanguageModel,
    saes: dict,
    prompts: pd.DataFrame,
    activations: ActivationSet,
    cfg: CausalConfig,
    baseline: pd.DataFrame | None = None,
):
    """Returns (feature_effects, ranking, summary, circuits, contexts, selection) over every SAE
    hook point."""
    encoded = encode_prompts(lm.tokenizer, prompts)
    select, heldout, selection = select_examples(encoded, prompts, baseline, cfg)
    effects, ranking, summary, circuits, contexts = [], {}, {}, {}, {}
    if not select:
        log.warning("causal %s: no benchmark to analyse (%s)", lm.name, selection["skipped"])
        return pd.DataFrame(), ranking, summary, circuits, contexts, selection
    clusters = template_clusters(prompts.reset_index(drop=True))  # prompts row -> cluster
    for hook, sae in saes.items():
        sae = sae.to(lm.device)
        stats = feature_statistics(sae, activations, hook, cfg)
        eff, ranking[hook], summary[hook], circuits[hook] = analyse_hook(
            lm, sae, hook, select, heldout, stats, cfg, clusters=clusters
        )
        effects.append(eff)
        contexts[hook] = _top_feature_controls(
            lm, sae, hook, activations, ranking[hook], summary[hook], circuits[hook], cfg
        )
    return pd.concat(effects, ignore_index=True), ranking, summary, circuits, contexts, selection


def _top_feature_controls(
    lm,
    sae,
    hook: str,
    activations: ActivationSet,
    ranking: list[dict],
    summary: dict,
    circuit: dict,
    cfg: CausalConfig,
) -> dict:
    """The top features' top-activating contexts, and the token-injection control written into
    `ranking` (token_driven), `summary` (token_injection) and the circuit's nodes (top_context)."""
    feats = [r["feature"] for r in ranking][: cfg.n_context_features]
    feats += [f["feature"] for f in circuit["features"] if f["feature"] not in feats][
        : max(0, cfg.n_context_features - len(feats))
    ]
    ctx = top_activating_contexts(
        sae,
        activations,
        hook,
        feats,
        lm.tokenizer,
        n=cfg.n_contexts,
        window=cfg.context_window,
        exclude=cfg.exclude,
    )
    injected = token_injection(
        lm, sae, parse_hook_point(hook), ctx, seed=cfg.seed, **cfg.token_injection
    )
    summary["token_injection"] = {str(f): v for f, v in injected.items()}
    for r in ranking:
        r["token_driven"] = injected.get(r["feature"], {}).get("token_driven")
    for node in circuit["features"]:
        top = ctx.get(node["feature"])
        node["top_context"] = top[0]["text"] if top else None
    return {str(f): c for f, c in ctx.items()}
