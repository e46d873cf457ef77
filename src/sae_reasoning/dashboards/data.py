"""Everything a feature dashboard shows, per model and hook point, as plain JSON-ready dicts.

Which features: the causal stage's analysed ones: the top-k candidates (by rank), the random
controls (marked as controls) and the circuit's members (in circuit order, up to a cap). Per
feature: firing rate and histogram over the captured benchmark tokens (scan.py), top contexts
and quantile samples with every token's activation, per-benchmark effects with CIs (the causal
stage's effects table), promoted/suppressed tokens and decoder-cosine neighbours (weights.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from sae_reasoning.activations.store import ActivationSet, MassiveActivationFilter
from sae_reasoning.dashboards import scan as sc
from sae_reasoning.dashboards.weights import decoder_neighbours, direct_logit_effect, logit_tables

EFFECT_ROLES = ("candidate", "control")


@dataclass
class DashboardConfig:
    max_features: int = 40  # pages per hook point (candidates, then controls, then circuit)
    max_circuit_features: int = 20  # circuit members beyond the candidates and controls
    n_contexts: int = 10  # top-activating contexts per feature
    n_quantiles: int = 5  # equal-count groups of the nonzero activations
    per_quantile: int = 3  # contexts drawn from each group
    window_before: int = 24  # tokens shown before the context's token
    window_after: int = 8  # ... and after it
    histogram_bins: int = 30
    n_logit_tokens: int = 10  # promoted and suppressed tokens listed
    n_neighbours: int = 5  # nearest features by decoder cosine
    max_tokens: int = (
        200_000  # captured tokens scanned per hook point (memory: tokens x features x 4 B)
    )
    seed: int = 0
    exclude: MassiveActivationFilter = field(default_factory=MassiveActivationFilter)

    @classmethod
    def from_params(cls, params: dict, where: str = "dashboards") -> DashboardConfig:
        p = dict(params)
        exclude = p.pop("massive_activations", None)
        known = {f.name for f in fields(cls)} - {"exclude"}
        unknown = sorted(set(p) - known)
        if unknown:
            raise ValueError(
                f"{where}: unknown parameter(s) {unknown}; expected some of {sorted(known)}"
            )
        for k, v in p.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "seed" else 1):
                raise ValueError(f"{where}.{k} = {v!r}: expected a positive integer")
        cfg = cls(**p)
        if exclude is not None:
            cfg.exclude = MassiveActivationFilter(**exclude)
        return cfg


def analysed_features(
    ranking: list[dict], effects: pd.DataFrame, circuit_nodes: list[dict], cfg: DashboardConfig
) -> list[dict]:
    """[{feature, rank, roles}] in page order: candidates by rank, controls, circuit members."""
    out: dict[int, dict] = {}

    def add(feat: int, role: str, rank=None):
        entry = out.setdefault(int(feat), {"feature": int(feat), "rank": rank, "roles": []})
        entry["rank"] = entry["rank"] if rank is None else rank
        if role not in entry["roles"]:
            entry["roles"].append(role)

    for r in sorted(ranking, key=lambda r: r["rank"]):
        add(r["feature"], "candidate", r["rank"])
    controls = effects.loc[effects["role"] == "control", "feature"] if len(effects) else []
    for f in dict.fromkeys(int(x) for x in controls):
        add(f, "control")
    for node in sorted(circuit_nodes, key=lambda n: n.get("order", 0))[: cfg.max_circuit_features]:
        add(node["feature"], "circuit")
    return list(out.values())[: cfg.max_features]


def feature_effects(effects: pd.DataFrame, feature: int) -> list[dict]:
    """The feature's ablation effects per mode and benchmark ("all" = pooled), as in the parquet."""
    if not len(effects):
        return []
    rows = effects[(effects["feature"] == feature) & effects["role"].isin(EFFECT_ROLES)]
    keys = (
        "mode",
        "benchmark",
        "n",
        "delta_logprob",
        "delta_logprob_lo",
        "delta_logprob_hi",
        "q_logprob",
        "delta_accuracy",
        "delta_accuracy_lo",
        "delta_accuracy_hi",
        "q_accuracy",
        "important",
    )
    out = []
    for _, r in rows.sort_values(["mode", "benchmark"]).iterrows():
        out.append({k: _clean(r.get(k)) for k in keys})
    return out


def _clean(v):
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    return float(v) if isinstance(v, (np.floating, float)) else v


def index_row(
    entry: dict, effects: list[dict], firing_rate: float, token_driven, benchmarks: list[str]
) -> dict:
    """One row of the index table: zero-ablation Δ gold log-prob per benchmark with CI, pooled q."""
    zero = {e["benchmark"]: e for e in effects if e["mode"] == "zero"}
    pooled = zero.get("all", {})
    return {
        **entry,
        "firing_rate": firing_rate,
        "token_driven": token_driven,
        "in_circuit": "circuit" in entry["roles"],
        "control": "control" in entry["roles"],
        "q_logprob": pooled.get("q_logprob"),
        "important": any(bool(e.get("important")) for e in effects) if effects else None,
        "per_benchmark": {
            b: {
                k: zero[b].get(k) for k in ("delta_logprob", "delta_logprob_lo", "delta_logprob_hi")
            }
            for b in benchmarks
            if b in zero
        },
    }


def dashboard_data(
    lm,
    sae,
    hook: str,
    activations: ActivationSet,
    *,
    ranking: list[dict],
    effects: pd.DataFrame,
    circuit_nodes: list[dict],
    token_injection: dict,
    benchmarks: list[str],
    cfg: DashboardConfig,
    model_name: str,
) -> dict:
    """The dashboard of one SAE: {"index": rows, "features": {id: page}, ...facts}."""
    chosen = analysed_features(ranking, effects, circuit_nodes, cfg)
    feats = [e["feature"] for e in chosen]
    bad = [f for f in feats if not 0 <= f < sae.W_dec.shape[0]]
    if bad:
        raise ValueError(
            f"dashboards {model_name} {hook}: features {bad} outside this SAE's "
            f"d_sae={sae.W_dec.shape[0]}"
        )
    decode = lm.tokenizer.decode
    scanned = (
        sc.scan(sae, activations, hook, feats, max_tokens=cfg.max_tokens, exclude=cfg.exclude)
        if feats
        else []
    )
    logits = (
        logit_tables(
            direct_logit_effect(lm.model, sae.W_dec[feats].detach()), decode, cfg.n_logit_tokens
        )
        if feats
        else []
    )
    neighbours = decoder_neighbours(sae.W_dec, feats, cfg.n_neighbours) if feats else []
    ctx = sc.ContextBuilder(scanned, decode, before=cfg.window_before, after=cfg.window_after)
    rng = np.random.default_rng(cfg.seed)
    index, pages = [], {}
    for j, entry in enumerate(chosen):
        f = entry["feature"]
        values, refs = sc.feature_values(scanned, j)
        rate = float((values > 0).mean()) if len(values) else 0.0
        effs = feature_effects(effects, f)
        td = token_injection.get(str(f), {}).get("token_driven")
        index.append(index_row(entry, effs, rate, td, benchmarks))
        pages[str(f)] = {
            **index[-1],
            "histogram": sc.histogram(values, cfg.histogram_bins),
            "top_contexts": [
                ctx.context(si, row, j) for si, row in sc.top_rows(values, refs, cfg.n_contexts)
            ],
            "quantiles": [
                {
                    **{k: v for k, v in q.items() if k != "rows"},
                    "contexts": [ctx.context(si, row, j) for si, row in q["rows"]],
                }
                for q in sc.quantile_rows(values, refs, cfg.n_quantiles, cfg.per_quantile, rng)
            ],
            "effects": effs,
            "logits": logits[j],
            "neighbours": neighbours[j],
            "token_injection": token_injection.get(str(f)),
        }
    n_scanned = {s.benchmark: int(s.keep.sum()) for s in scanned}
    return {
        "model": model_name,
        "hook_point": hook,
        "d_sae": int(sae.W_dec.shape[0]),
        "d_model": int(sae.W_dec.shape[1]),
        "benchmarks": benchmarks,
        "scanned_tokens": n_scanned,
        "window": [cfg.window_before, cfg.window_after],
        "index": index,
        "features": pages,
    }
