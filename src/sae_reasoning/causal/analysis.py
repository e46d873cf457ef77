"""Which SAE features the model uses to answer: attribution, then exact ablation.

1. Feature statistics from the captured activations: mean activation (for mean ablation),
   a bank of activations of held-aside tokens (for random replacement), firing rates.
2. Attribution patching on the `select` split: one forward and backward per batch gives,
   for every feature, the estimated change of the gold answer's log-probability if the
   feature were zero-ablated at the positions the ablations act at (gradient x (0 -
   activation), summed over them).
3. Circuit search on the `select` split (circuits.py): the fewest features, in estimate
   order, whose exact ablation recovers a fraction of the whole SAE's effect.
4. Exact ablation on the `heldout` split, with the SAE error term kept, starting from
   the clean residual at the SAE's layer (only the blocks above it run): each top
   candidate alone; controls (random live features alone, K random features together,
   norm-matched random directions); the top-K together; the circuit and its complement
   (faithfulness, completeness; mean ablation by default, as Marks et al.); all features;
   the error term.
5. Statistics per condition (stats.py): paired bootstrap CIs, sign-flip and McNemar
   p-values, Benjamini-Hochberg q-values across all single features tested.
6. Ranking by the exact drop in gold log-prob.

Where ablations act (`positions`, scoring.py): `answer`, the last prompt token and the
answer tokens; or `all`, every position of few-shot block, question and answer except
position 0 (when the massive-activation rule leaves it out of the SAE's training data).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from sae_reasoning.activations.store import ActivationSet, MassiveActivationFilter
from sae_reasoning.causal import stats as st
from sae_reasoning.causal.circuits import completeness, faithfulness, find_circuit
from sae_reasoning.causal.splice import (
    AttributionProbe, DirectionControl, ErrorAblation, FeatureAblation, spliced,
)
from sae_reasoning.models.cached_forward import cut_above
from sae_reasoning.models.hooks import parse_hook_point, patch_residual
from sae_reasoning.models.loading import LanguageModel
from sae_reasoning.scoring import (
    POSITIONS, EncodedBenchmark, answer_logprobs, encode_prompts, iter_answer_batches, rerun_segment,
    score_conditions,
)

log = logging.getLogger(__name__)


@dataclass
class CausalConfig:
    top_k: int = 12                     # candidates ablated exactly
    n_random_controls: int = 6          # random live features ablated alone, as a control
    n_random_sets: int = 3              # draws of top_k random live features ablated together
    n_random_directions: int = 3        # norm-matched random directions (control for the top-K set)
    modes: tuple[str, ...] = ("zero", "resample")
    positions: str = "answer"           # where ablations act: answer (last prompt token + answer) | all
    max_examples_per_benchmark: int = 60    # per split
    batch_size: int = 16
    stats_tokens: int = 20000           # tokens encoded for means, the resample bank, firing rates
    n_boot: int = 2000                  # bootstrap resamples per CI
    circuit_fraction: float = 0.8       # share of the whole-SAE effect a circuit must recover
    circuit_refine: int = 4             # sizes checked between the last failing and first passing size
    circuit_examples_per_benchmark: int = 20    # select examples the circuit search runs on (cost)
    circuit_mode: str = "mean"          # ablation of features outside/inside the circuit (Marks et al.: mean)
    n_context_features: int = 10        # top features whose top-activating contexts are listed
    n_contexts: int = 5
    context_window: int = 12
    seed: int = 0
    exclude: MassiveActivationFilter = field(default_factory=MassiveActivationFilter)

    @classmethod
    def from_params(cls, params: dict) -> "CausalConfig":
        p = dict(params)
        exclude = p.pop("massive_activations", None)
        cfg = cls(**{k: (tuple(v) if k == "modes" else v) for k, v in p.items()})
        if exclude is not None:
            cfg.exclude = MassiveActivationFilter(**exclude)
        if cfg.positions not in POSITIONS:
            raise ValueError(f"causal.positions {cfg.positions!r}: expected one of {POSITIONS}")
        return cfg

    def scoring(self) -> dict:
        """Where ablations act, as score_conditions' keyword arguments. Position 0 is left
        clean with `all` exactly when SAE training leaves it out (massive_activations)."""
        return {"positions": self.positions, "exclude_first": self.exclude.exclude_first_position}


def subset(encoded: list[EncodedBenchmark], split: str, cap: int, seed: int) -> list[EncodedBenchmark]:
    rng = np.random.default_rng(seed)
    out = []
    for b in encoded:
        ex = [e for e in b.examples if e.split == split]
        if len(ex) > cap:
            ex = [ex[i] for i in sorted(rng.choice(len(ex), cap, replace=False))]
        if ex:
            out.append(EncodedBenchmark(b.name, b.prefix, ex))
    return out


@torch.no_grad()
def feature_statistics(sae, activations: ActivationSet, hook: str, cfg: CausalConfig) -> dict:
    """Mean activation, firing rate and a resample bank, from captured tokens."""
    feats = []
    n = 0
    for batch in activations.iter_batches(hook, 1024, shuffle=True, seed=cfg.seed, exclude=cfg.exclude):
        feats.append(sae.encode(batch.to(sae.W_dec)).cpu())
        n += len(batch)
        if n >= cfg.stats_tokens:
            break
    return statistics_of(torch.cat(feats)[: cfg.stats_tokens])


def statistics_of(f: torch.Tensor) -> dict:
    """The same statistics from feature activations already at hand [tokens, d_sae]."""
    return {"mean": f.mean(0), "firing_rate": (f > 0).float().mean(0), "bank": f, "n_tokens": len(f)}


def attribution(lm: LanguageModel, sae, layer: int, benchmarks: list[EncodedBenchmark], batch_size: int,
                **scoring) -> torch.Tensor:
    """Estimated mean change in gold log-prob per example when each feature is zero-ablated."""
    grad_sum, grad_f_sum = attribution_terms(lm, sae, layer, benchmarks, batch_size, **scoring)
    return -grad_f_sum


def attribution_terms(lm: LanguageModel, sae, layer: int, benchmarks: list[EncodedBenchmark],
                      batch_size: int, *, positions: str = "answer",
                      exclude_first: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per feature, mean over examples of sum_tokens grad and sum_tokens grad * f.

    The estimate for replacing f by a constant c is c * first - second: zero ablation
    -second, mean ablation mean * first - second (one backward pass serves both). The sums
    run over the positions the ablation acts at (`positions`, `exclude_first`: as in
    score_conditions), so the estimate is of the same quantity the exact ablation measures.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions {positions!r}: expected one of {POSITIONS}")
    d_sae = sae.W_dec.shape[0]
    sums = [torch.zeros(d_sae, dtype=torch.float64), torch.zeros(d_sae, dtype=torch.float64)]
    n = 0
    probe = AttributionProbe(sae)
    with frozen(lm.model), frozen(sae):
        if positions == "all":
            n = _attribute_all_positions(lm, sae, layer, benchmarks, batch_size, exclude_first, sums)
        else:
            for batch in iter_answer_batches(lm, benchmarks, batch_size, progress="attribution"):
                _attribute_batch(lm, layer, probe, batch, sums)
                n += len(batch.examples)
    return (sums[0] / max(n, 1)).float(), (sums[1] / max(n, 1)).float()


def estimate(terms: tuple[torch.Tensor, torch.Tensor], mode: str, stats: dict) -> torch.Tensor:
    """Attribution estimate of each feature's single ablation in `mode` (zero or mean)."""
    grad_sum, grad_f_sum = terms
    if mode == "zero":
        return -grad_f_sum
    if mode == "mean":
        return stats["mean"].to(grad_sum) * grad_sum - grad_f_sum
    raise ValueError(f"no attribution estimate for ablation mode {mode!r} (zero or mean)")


@contextmanager
def frozen(module: torch.nn.Module):
    """No parameter gradients: backward then only runs from the metric down to the probe's
    leaf (the blocks above the SAE), never computing weight gradients or the blocks below."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _add_terms(sums: list[torch.Tensor], probe: AttributionProbe, acted: torch.Tensor) -> None:
    """Add sum grad and sum grad * f over the positions `acted` ([B, S] bool) of the probe's leaf."""
    f = probe.features
    if f is None or f.grad is None:
        return
    grad = f.grad * acted[..., None].to(f.grad)
    sums[0] += grad.sum((0, 1)).double().cpu()
    sums[1] += (grad * f.detach()).sum((0, 1)).double().cpu()


def _attribute_all_positions(lm, sae, layer, benchmarks, batch_size, exclude_first, sums) -> int:
    """Attribution summed over every position an ablation with positions='all' acts at.

    The probe goes in wherever the ablation would: the few-shot block's and the questions'
    contexts are rebuilt with it above the layer, with grad (scoring.rerun_segment, from the
    clean residual recorded while the clean contexts were built), and the answer pass runs
    on them, so the gradient reaches every position. The few-shot block is the same for
    all of a benchmark's examples: it runs once per benchmark, its keys/values above the
    layer are cut into leaves that sum the gradients of every batch, and one backward at
    the benchmark's end carries that sum through the block (cached_forward.cut_above).
    Running each example uncached instead would run and backpropagate the block once per
    example; rebuilding it per batch, once per batch. Returns the number of examples.
    """
    model = lm.model
    n = 0
    block = None      # the benchmark's few-shot block under the probe, while its batches run

    def probed(probe):
        return lambda: patch_residual(model, layer, probe)

    def acted(seg_positions, mask):
        keep = mask.bool()
        return keep & (seg_positions != 0) if exclude_first else keep

    for batch in iter_answer_batches(lm, benchmarks, batch_size, progress="attribution", record_layer=layer):
        with torch.enable_grad():
            ctx = None
            if batch.prefix is not None:
                if block is None:
                    probe = AttributionProbe(sae)
                    built = rerun_segment(model, layer, batch.prefix, None, probed(probe), exclude_first=False)
                    context, originals, leaves = cut_above(built, layer)
                    block = {"probe": probe, "acted": acted(batch.prefix.positions, batch.prefix.mask),
                             "context": context, "originals": originals, "leaves": leaves}
                ctx = block["context"].expand(len(batch.examples))
            q_probe = AttributionProbe(sae)
            if batch.question is not None:
                ctx = rerun_segment(model, layer, batch.question, ctx, probed(q_probe), exclude_first=False)
            a_probe = AttributionProbe(sae)
            with patch_residual(model, layer, a_probe):
                logits = batch.run(model, grad=True, context=ctx)
            _, summed, _ = answer_logprobs(batch, logits)
            summed[batch.gold_rows()].sum().backward()
        if batch.question is not None:
            _add_terms(sums, q_probe, acted(batch.question.positions, batch.question.mask))
        _add_terms(sums, a_probe, acted(batch.answer_positions(), batch.mask))
        n += len(batch.examples)
        if block is not None and batch.last_of_benchmark:
            # The block's gradient, summed over the benchmark's batches, back through it once.
            pairs = [(o, leaf.grad) for o, leaf in zip(block["originals"], block["leaves"]) if leaf.grad is not None]
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
            _add_terms(sums, block["probe"], block["acted"])
            block = None
    return n


def _attribute_batch(lm, layer, probe, batch, sums: list[torch.Tensor]) -> None:
    """Add the batch's sums over its answer positions of gradient and gradient x activation."""
    with patch_residual(lm.model, layer, probe):
        logits = batch.run(lm.model, grad=True)
    _, summed, _ = answer_logprobs(batch, logits)
    summed[batch.gold_rows()].sum().backward()
    _add_terms(sums, probe, batch.mask.bool())


def _summarize(clean: pd.DataFrame, ablated: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    m = clean.merge(ablated, on=["row", "benchmark"], suffixes=("_clean", ""))
    both = pd.concat([m, m.assign(benchmark="all")])
    rows = []
    for bench, d in both.groupby("benchmark"):
        rows.append({
            "benchmark": bench, "n": len(d),
            "clean_accuracy": d["correct_clean"].mean(), "ablated_accuracy": d["correct"].mean(),
            "clean_logprob": d["gold_logprob_clean"].mean(), "ablated_logprob": d["gold_logprob"].mean(),
            "kl": d["kl"].mean(),
            **st.paired_effect(d["gold_logprob_clean"], d["gold_logprob"], d["correct_clean"], d["correct"],
                               n_boot=n_boot, seed=seed),
        })
    return pd.DataFrame(rows).assign(
        delta_accuracy=lambda d: d.ablated_accuracy - d.clean_accuracy,
        delta_logprob=lambda d: d.ablated_logprob - d.clean_logprob,
    )


def _add_qvalues(eff: pd.DataFrame) -> pd.DataFrame:
    """BH across all single features tested (candidates and controls), per hook, mode, benchmark."""
    eff = eff.copy()
    eff["q_logprob"] = np.nan
    eff["q_accuracy"] = np.nan
    single = eff.role.isin(["candidate", "control"])
    for _, idx in eff[single].groupby(["hook_point", "mode", "benchmark"]).groups.items():
        eff.loc[idx, "q_logprob"] = st.bh_qvalues(eff.loc[idx, "p_logprob"])
        eff.loc[idx, "q_accuracy"] = st.bh_qvalues(eff.loc[idx, "p_accuracy"])
    return eff


def _cond(lm, layer, fn):
    return lambda _b: spliced(lm.model, layer, fn)


EFFECT_KEYS = ("delta_logprob", "delta_logprob_lo", "delta_logprob_hi", "delta_accuracy", "delta_accuracy_lo",
               "delta_accuracy_hi", "p_logprob", "p_accuracy", "kl")


def _effect(row) -> dict:
    return {k: (None if pd.isna(row[k]) else float(row[k])) for k in EFFECT_KEYS}


def analyse_hook(lm: LanguageModel, sae, hook: str, select: list[EncodedBenchmark],
                 heldout: list[EncodedBenchmark], stats: dict, cfg: CausalConfig):
    """(effects table, ranking list, summary dict, circuit dict) for one SAE."""
    layer = parse_hook_point(hook)
    d_sae = sae.W_dec.shape[0]
    terms = attribution_terms(lm, sae, layer, select, cfg.batch_size, **cfg.scoring())
    est = estimate(terms, "zero", stats)
    alive = stats["firing_rate"] > 0
    order = torch.argsort(torch.where(alive, est, torch.full_like(est, float("inf"))))
    live_order = [int(i) for i in order[: int(alive.sum())]]
    candidates = live_order[: cfg.top_k]
    rng = np.random.default_rng(cfg.seed)
    pool = np.setdiff1d(np.flatnonzero(alive.numpy()), candidates)
    controls = [int(i) for i in rng.choice(pool, min(cfg.n_random_controls, len(pool)), replace=False)]
    live = np.flatnonzero(alive.numpy())
    random_sets = [[int(i) for i in rng.choice(live, min(len(candidates), len(live)), replace=False)]
                   for _ in range(cfg.n_random_sets)] if candidates else []

    cm = cfg.circuit_mode
    est_c = estimate(terms, cm, stats)
    # Circuit nodes by |estimate|, as Marks et al. select nodes by |indirect effect|: a feature
    # whose ablation the linear estimate says would help can still matter a lot.
    magnitude = torch.where(alive, est_c.abs(), torch.full_like(est_c, -1.0))
    circuit_order = [int(i) for i in torch.argsort(magnitude, descending=True)[: int(alive.sum())]]
    search_set = subset(select, "select", cfg.circuit_examples_per_benchmark, cfg.seed)
    search = find_circuit(lm, sae, layer, search_set, circuit_order, est_c, stats, fraction=cfg.circuit_fraction,
                          refine=cfg.circuit_refine, mode=cm, batch_size=cfg.batch_size, scoring=cfg.scoring())

    conditions, meta = {}, {}

    def add(name, fn, feature=-1, mode="zero", role=""):
        conditions[name] = _cond(lm, layer, fn)
        meta[name] = {"feature": feature, "mode": mode, "role": role}

    for role, feats in (("candidate", candidates), ("control", controls)):
        for feat in feats:
            for mode in cfg.modes:
                add(f"{mode}:{feat}", FeatureAblation(sae, [feat], mode, mean=stats["mean"], bank=stats["bank"],
                                                      seed=cfg.seed + feat), feat, mode, role)
    if candidates:
        add("zero:top_k", FeatureAblation(sae, candidates, "zero"), role="top_k_set")
    for j, feats in enumerate(random_sets):
        add(f"zero:random_set{j}", FeatureAblation(sae, feats, "zero"), role="random_set")
    for j in range(cfg.n_random_directions if candidates else 0):
        add(f"direction:{j}", DirectionControl(sae, candidates, seed=cfg.seed + j), mode="direction",
            role="random_direction")
    def ablate(feats, mode):
        return FeatureAblation(sae, feats, mode, mean=stats["mean"], bank=stats["bank"], seed=cfg.seed)

    if search.features:
        add("circuit:ablated", ablate(search.features, cm), mode=cm, role="circuit_ablated")
        add("circuit:only", ablate(sorted(set(range(d_sae)) - set(search.features)), cm), mode=cm,
            role="circuit_only")
    add("zero:all", ablate(torch.arange(d_sae), "zero"), role="all_features")
    if cm != "zero":
        add(f"{cm}:all", ablate(torch.arange(d_sae), cm), mode=cm, role="all_features_circuit_mode")
    add("error:zero", ErrorAblation(sae), mode="zero", role="error_term")
    add("splice:none", FeatureAblation(sae, [], "zero"), mode="none", role="splice_identity")

    # Every condition acts at the SAE's layer: ablated passes run only the blocks above it.
    scores = score_conditions(lm, heldout, conditions, batch_size=cfg.batch_size, progress=f"ablations {hook}",
                              start_layer=layer, **cfg.scoring())
    parts = []
    for name, df in scores.items():
        if name == "clean":
            continue
        s = _summarize(scores["clean"], df, cfg.n_boot, cfg.seed).assign(hook_point=hook, condition=name, **meta[name])
        feat = meta[name]["feature"]
        s["attribution"] = float(est[feat]) if feat >= 0 else np.nan
        s["firing_rate"] = float(stats["firing_rate"][feat]) if feat >= 0 else np.nan
        parts.append(s)
    eff = _add_qvalues(pd.concat(parts, ignore_index=True))
    here = eff[eff.benchmark == "all"].set_index("condition", drop=False)
    zero_cand = here[(here["mode"] == "zero") & (here.role == "candidate")].sort_values("delta_logprob")
    rho = spearmanr(zero_cand["attribution"], zero_cand["delta_logprob"]).statistic if len(zero_cand) > 2 else None
    ranking = [
        {"rank": r + 1, "feature": int(row.feature), "delta_logprob": float(row.delta_logprob),
         "delta_logprob_ci": [float(row.delta_logprob_lo), float(row.delta_logprob_hi)],
         "delta_accuracy": float(row.delta_accuracy),
         "delta_accuracy_ci": [float(row.delta_accuracy_lo), float(row.delta_accuracy_hi)],
         "p_logprob": float(row.p_logprob), "q_logprob": float(row.q_logprob),
         "p_accuracy_mcnemar": float(row.p_accuracy), "q_accuracy": float(row.q_accuracy),
         "kl": float(row.kl), "attribution_estimate": float(row.attribution), "firing_rate": float(row.firing_rate),
         "in_circuit": int(row.feature) in search.features}
        for r, row in enumerate(zero_cand.itertuples())
    ]
    ctrl = here[(here["mode"] == "zero") & (here.role == "control")]
    single_zero = here[(here["mode"] == "zero") & here.role.isin(["candidate", "control"])]
    all_row, err_row = here.loc["zero:all"], here.loc["error:zero"]
    d_err, d_feat = float(err_row.delta_logprob), float(all_row.delta_logprob)
    circuit = _circuit_summary(search, here, here.loc[f"{cm}:all"], cm)
    summary = {
        "layer": layer,
        "d_sae": int(d_sae),
        # Where every ablation, control and attribution estimate acts (CausalConfig.scoring).
        "positions": cfg.positions,
        "first_position_exempt": bool(cfg.positions == "all" and cfg.exclude.exclude_first_position),
        "alive_features": int(alive.sum()),
        "n_select_examples": sum(len(b.examples) for b in select),
        "n_heldout_examples": sum(len(b.examples) for b in heldout),
        "clean": _per_benchmark(scores["clean"]),
        "splice_identity_max_abs_logprob_change": float(
            (scores["splice:none"]["gold_logprob"] - scores["clean"]["gold_logprob"]).abs().max()),
        "all_features_zero": _effect(all_row),
        "top_feature_mean_delta_logprob": float(zero_cand["delta_logprob"].mean()) if len(zero_cand) else None,
        "random_control_mean_delta_logprob": float(ctrl["delta_logprob"].mean()) if len(ctrl) else None,
        "spearman_attribution_vs_exact": None if rho is None or np.isnan(rho) else float(rho),
        "features_tested": int(len(single_zero)),
        "significant_features_q05": {
            "logprob": int((single_zero.q_logprob < 0.05).sum()),
            "accuracy": int((single_zero.q_accuracy < 0.05).sum()),
        },
        "controls": {
            "top_k_set": _effect(here.loc["zero:top_k"]) if "zero:top_k" in here.index else None,
            "k": len(candidates),
            "random_feature_sets": [_effect(r) for _, r in here[here.role == "random_set"].iterrows()],
            "random_directions": [_effect(r) for _, r in here[here.role == "random_direction"].iterrows()],
        },
        "error_term": {
            "error_ablated": _effect(err_row),
            "all_features_ablated": _effect(all_row),
            # |Δ| of dropping the error term over the sum with dropping every feature.
            "error_share": abs(d_err) / (abs(d_err) + abs(d_feat)) if abs(d_err) + abs(d_feat) > 0 else None,
        },
        "circuit": circuit,
    }
    return eff, ranking, summary, {**circuit, "features": [
        {"feature": f, "attribution": float(est_c[f]), "attribution_zero": float(est[f]),
         "firing_rate": float(stats["firing_rate"][f]), "order": i + 1,
         "exact_delta_logprob": (float(here.loc[f"zero:{f}"].delta_logprob) if f"zero:{f}" in here.index else None)}
        for i, f in enumerate(search.features)]}


def _circuit_summary(search, here: pd.DataFrame, all_row, mode: str) -> dict:
    out = {"fraction_target": search.fraction, "found": search.found, "n_features": len(search.features),
           "ablation_mode": mode,
           "search_split": "select", "search_delta_all": search.delta_all,
           "search_recovered": search.recovered, "estimate_size": search.estimate_size,
           "checked_sizes": {str(k): v for k, v in search.checked.items()}}
    if search.found:
        # On held-out examples, in the notation of Marks et al.: m(M) = clean = 0 in Δ units.
        m_empty = float(all_row.delta_logprob)
        m_c = float(here.loc["circuit:only"].delta_logprob)
        m_rest = float(here.loc["circuit:ablated"].delta_logprob)
        out.update({
            "heldout_delta_all": m_empty,
            "heldout_delta_circuit_ablated": _effect(here.loc["circuit:ablated"]),
            "heldout_delta_circuit_only": _effect(here.loc["circuit:only"]),
            "faithfulness": faithfulness(m_c, 0.0, m_empty) if m_empty != 0 else None,
            "completeness": completeness(m_rest, 0.0, m_empty) if m_empty != 0 else None,
            "heldout_recovered": m_rest / m_empty if m_empty != 0 else None,
        })
    return out


def run_causal_analysis(lm: LanguageModel, saes: dict, prompts: pd.DataFrame,
                        activations: ActivationSet, cfg: CausalConfig):
    """Returns (feature_effects, ranking, summary, circuits, contexts) over every SAE hook point."""
    from sae_reasoning.causal.contexts import top_activating_contexts

    encoded = encode_prompts(lm.tokenizer, prompts)
    select = subset(encoded, "select", cfg.max_examples_per_benchmark, cfg.seed)
    heldout = subset(encoded, "heldout", cfg.max_examples_per_benchmark, cfg.seed)
    if not select or not heldout:
        raise ValueError("causal analysis needs prompts in both splits 'select' and 'heldout'")
    effects, ranking, summary, circuits, contexts = [], {}, {}, {}, {}
    for hook, sae in saes.items():
        sae = sae.to(lm.device)
        stats = feature_statistics(sae, activations, hook, cfg)
        eff, ranking[hook], summary[hook], circuits[hook] = analyse_hook(lm, sae, hook, select, heldout, stats, cfg)
        effects.append(eff)
        feats = [r["feature"] for r in ranking[hook]][: cfg.n_context_features]
        feats += [f["feature"] for f in circuits[hook]["features"] if f["feature"] not in feats][
            : max(0, cfg.n_context_features - len(feats))]
        ctx = top_activating_contexts(sae, activations, hook, feats, lm.tokenizer, n=cfg.n_contexts,
                                      window=cfg.context_window, exclude=cfg.exclude)
        contexts[hook] = {str(f): c for f, c in ctx.items()}
        for node in circuits[hook]["features"]:
            top = ctx.get(node["feature"])
            node["top_context"] = top[0]["text"] if top else None
    return pd.concat(effects, ignore_index=True), ranking, summary, circuits, contexts


def _per_benchmark(scores: pd.DataFrame) -> dict:
    g = scores.groupby("benchmark")
    return {b: {"n": int(len(d)), "accuracy": float(d["correct"].mean()), "chance": float(d["chance"].mean()),
                "gold_logprob": float(d["gold_logprob"].mean())} for b, d in g}
