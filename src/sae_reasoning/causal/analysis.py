"""Which SAE features the model uses to answer: attribution, then exact ablation.

1. Feature statistics from the captured activations: mean activation (for mean ablation),
   a bank of activations of held-aside tokens (for random replacement), firing rates.
2. Attribution patching on the `select` split: one forward and backward per batch gives,
   for every feature, the estimated change of the gold answer's log-probability if the
   feature were zero-ablated at the answer positions (gradient x (0 - activation)).
3. Exact ablation on the `heldout` split of the top candidates, of random live features
   (a control), and of all features at once (a reference), with the SAE error term kept.
4. Ranking by the exact drop in gold log-probability.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from sae_reasoning.activations.store import ActivationSet, MassiveActivationFilter
from sae_reasoning.causal.splice import AttributionProbe, FeatureAblation, spliced
from sae_reasoning.models.hooks import parse_hook_point, patch_residual
from sae_reasoning.models.loading import LanguageModel
from sae_reasoning.scoring import (
    EncodedBenchmark, answer_logprobs, encode_prompts, iter_answer_batches, score_conditions,
)

log = logging.getLogger(__name__)


@dataclass
class CausalConfig:
    top_k: int = 12                     # candidates ablated exactly
    n_random_controls: int = 6          # random live features ablated as a control
    modes: tuple[str, ...] = ("zero", "resample")
    max_examples_per_benchmark: int = 60    # per split
    batch_size: int = 16
    stats_tokens: int = 20000           # tokens encoded for means, the resample bank, firing rates
    seed: int = 0
    exclude: MassiveActivationFilter = field(default_factory=MassiveActivationFilter)

    @classmethod
    def from_params(cls, params: dict) -> "CausalConfig":
        p = dict(params)
        exclude = p.pop("massive_activations", None)
        cfg = cls(**{k: (tuple(v) if k == "modes" else v) for k, v in p.items()})
        if exclude is not None:
            cfg.exclude = MassiveActivationFilter(**exclude)
        return cfg


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
    f = torch.cat(feats)[: cfg.stats_tokens]
    return {"mean": f.mean(0), "firing_rate": (f > 0).float().mean(0), "bank": f, "n_tokens": len(f)}


def attribution(lm: LanguageModel, sae, layer: int, benchmarks: list[EncodedBenchmark], batch_size: int) -> torch.Tensor:
    """Estimated mean change in gold log-prob per example when each feature is zero-ablated."""
    total = torch.zeros(sae.W_dec.shape[0], dtype=torch.float64)
    n = 0
    probe = AttributionProbe(sae)
    for batch in iter_answer_batches(lm, benchmarks, batch_size, progress="attribution"):
        with patch_residual(lm.model, layer, probe):
            logits = batch.run(lm.model, grad=True)
        _, summed, _ = answer_logprobs(batch, logits)
        gold_rows = torch.tensor([r for r, (i, j) in enumerate(zip(batch.pair_example.tolist(), batch.pair_answer.tolist()))
                                  if j == batch.examples[i].gold])
        summed[gold_rows].sum().backward()
        f = probe.features
        mask = batch.mask[..., None].to(f.dtype)
        est = (probe.features.grad * (0 - f.detach()) * mask).sum((0, 1))
        total += est.double().cpu()
        n += len(batch.examples)
        lm.model.zero_grad(set_to_none=True)
    return (total / max(n, 1)).float()


def _summarize(clean: pd.DataFrame, ablated: pd.DataFrame) -> pd.DataFrame:
    m = clean.merge(ablated, on=["row", "benchmark"], suffixes=("_clean", ""))
    both = pd.concat([m, m.assign(benchmark="all")])
    g = both.groupby("benchmark")
    return pd.DataFrame({
        "n": g.size(),
        "clean_accuracy": g["correct_clean"].mean(),
        "ablated_accuracy": g["correct"].mean(),
        "clean_logprob": g["gold_logprob_clean"].mean(),
        "ablated_logprob": g["gold_logprob"].mean(),
        "kl": g["kl"].mean(),
    }).assign(
        delta_accuracy=lambda d: d.ablated_accuracy - d.clean_accuracy,
        delta_logprob=lambda d: d.ablated_logprob - d.clean_logprob,
    ).reset_index()


def run_causal_analysis(lm: LanguageModel, saes: dict, prompts: pd.DataFrame,
                        activations: ActivationSet, cfg: CausalConfig):
    """Returns (feature_effects table, ranking dict, summary dict) over every SAE hook point."""
    encoded = encode_prompts(lm.tokenizer, prompts)
    select = subset(encoded, "select", cfg.max_examples_per_benchmark, cfg.seed)
    heldout = subset(encoded, "heldout", cfg.max_examples_per_benchmark, cfg.seed)
    if not select or not heldout:
        raise ValueError("causal analysis needs prompts in both splits 'select' and 'heldout'")
    effects, ranking, summary = [], {}, {}
    for hook, sae in saes.items():
        layer = parse_hook_point(hook)
        sae = sae.to(lm.device)
        stats = feature_statistics(sae, activations, hook, cfg)
        est = attribution(lm, sae, layer, select, cfg.batch_size)
        alive = stats["firing_rate"] > 0
        order = torch.argsort(torch.where(alive, est, torch.full_like(est, float("inf"))))
        candidates = [int(i) for i in order[: cfg.top_k] if alive[i]]
        rng = np.random.default_rng(cfg.seed)
        pool = np.setdiff1d(np.flatnonzero(alive.numpy()), candidates)
        controls = [int(i) for i in rng.choice(pool, min(cfg.n_random_controls, len(pool)), replace=False)]

        conditions, meta = {}, {}
        for role, feats in (("candidate", candidates), ("control", controls)):
            for feat in feats:
                for mode in cfg.modes:
                    name = f"{mode}:{feat}"
                    abl = FeatureAblation(sae, [feat], mode, mean=stats["mean"], bank=stats["bank"], seed=cfg.seed + feat)
                    conditions[name] = (lambda a: lambda _b: spliced(lm.model, layer, a))(abl)
                    meta[name] = {"feature": feat, "mode": mode, "role": role}
        everything = FeatureAblation(sae, torch.arange(sae.W_dec.shape[0]), "zero")
        conditions["zero:all"] = lambda _b: spliced(lm.model, layer, everything)
        meta["zero:all"] = {"feature": -1, "mode": "zero", "role": "all_features"}
        none = FeatureAblation(sae, [], "zero")
        conditions["splice:none"] = lambda _b: spliced(lm.model, layer, none)
        meta["splice:none"] = {"feature": -1, "mode": "none", "role": "splice_identity"}

        scores = score_conditions(lm, heldout, conditions, batch_size=cfg.batch_size,
                                  progress=f"ablations {hook}")
        for name, df in scores.items():
            if name == "clean":
                continue
            s = _summarize(scores["clean"], df).assign(hook_point=hook, condition=name, **meta[name])
            s["attribution"] = float(est[meta[name]["feature"]]) if meta[name]["feature"] >= 0 else np.nan
            s["firing_rate"] = float(stats["firing_rate"][meta[name]["feature"]]) if meta[name]["feature"] >= 0 else np.nan
            effects.append(s)
        eff = pd.concat(effects, ignore_index=True)
        here = eff[(eff.hook_point == hook) & (eff.benchmark == "all")]
        zero_cand = here[(here["mode"] == "zero") & (here.role == "candidate")].sort_values("delta_logprob")
        rho = spearmanr(zero_cand["attribution"], zero_cand["delta_logprob"]).statistic if len(zero_cand) > 2 else None
        ranking[hook] = [
            {"rank": r + 1, "feature": int(row.feature), "delta_logprob": float(row.delta_logprob),
             "delta_accuracy": float(row.delta_accuracy), "kl": float(row.kl),
             "attribution_estimate": float(row.attribution), "firing_rate": float(row.firing_rate)}
            for r, row in enumerate(zero_cand.itertuples())
        ]
        ctrl = here[(here["mode"] == "zero") & (here.role == "control")]
        summary[hook] = {
            "layer": layer,
            "d_sae": int(sae.W_dec.shape[0]),
            "alive_features": int(alive.sum()),
            "n_select_examples": sum(len(b.examples) for b in select),
            "n_heldout_examples": sum(len(b.examples) for b in heldout),
            "clean": _per_benchmark(scores["clean"]),
            "splice_identity_max_abs_logprob_change": float(
                (scores["splice:none"]["gold_logprob"] - scores["clean"]["gold_logprob"]).abs().max()),
            "all_features_zero": here[here.role == "all_features"].iloc[0][
                ["delta_accuracy", "delta_logprob", "kl"]].astype(float).to_dict(),
            "top_feature_mean_delta_logprob": float(zero_cand["delta_logprob"].mean()) if len(zero_cand) else None,
            "random_control_mean_delta_logprob": float(ctrl["delta_logprob"].mean()) if len(ctrl) else None,
            "spearman_attribution_vs_exact": None if rho is None or np.isnan(rho) else float(rho),
        }
    return pd.concat(effects, ignore_index=True), ranking, summary


def _per_benchmark(scores: pd.DataFrame) -> dict:
    g = scores.groupby("benchmark")
    return {b: {"n": int(len(d)), "accuracy": float(d["correct"].mean()), "chance": float(d["chance"].mean()),
                "gold_logprob": float(d["gold_logprob"].mean())} for b, d in g}
