"""Exact ablation on the held-out split: one scoring sweep over the condition set, the
numerical floor (floor.py) applied to its scores, then each condition's effects against
clean, tests and importance calls (effects.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sae_reasoning.causal.conditions import ConditionSet
from sae_reasoning.causal.effects import add_calls, condition_effects
from sae_reasoning.causal.floor import NumericalFloor, check_factor, measure_floor, snap
from sae_reasoning.causal.selection import FeatureChoice
from sae_reasoning.scoring import EncodedBenchmark, Scorer


@dataclass
class Measured:
    effects: pd.DataFrame  # per condition and benchmark (and "all"), with tests and calls
    calls: dict  # features tested / significant / important per role
    scores: dict[str, pd.DataFrame]  # condition -> per-example scores ("clean" included), snapped
    cost: dict  # time of the ablation sweep (the floor's rescoring included)
    floor: NumericalFloor  # rounding changes, measured; differences within it count as 0


def measure(
    scorer: Scorer,
    heldout: list[EncodedBenchmark],
    conds: ConditionSet,
    hook: str,
    choice: FeatureChoice,
    stats: dict,
    clusters: pd.Series,
    cfg,
) -> Measured:
    """Every condition of `conds` scored on `heldout`, and its effects (one row per benchmark)."""
    check_factor(cfg.numerical_floor_factor)  # before the sweep, not after it
    t0 = time.time()
    scores = scorer.score(heldout, conds.conditions, progress=f"ablations {hook}", alone=True)
    seconds = time.time() - t0
    floor = measure_floor(scores, cfg.numerical_floor_factor, scorer.batch_size)
    scores = snap(scores, floor)
    parts = []
    for name, df in scores.items():
        if name == "clean":
            continue
        s = condition_effects(scores["clean"], df, clusters, n_boot=cfg.n_boot, seed=cfg.seed)
        meta = conds.meta[name]
        feat = meta["feature"]
        parts.append(
            s.assign(
                hook_point=hook,
                condition=name,
                **meta,
                attribution=float(choice.estimate[feat]) if feat >= 0 else np.nan,
                firing_rate=float(stats["firing_rate"][feat]) if feat >= 0 else np.nan,
            )
        )
    eff, calls = add_calls(
        pd.concat(parts, ignore_index=True),
        len(heldout),
        alpha=cfg.alpha,
        null_quantile=cfg.null_quantile,
    )
    n = max(len(conds.conditions), 1)
    cost = {
        "conditions": len(conds.conditions),
        "ablation_seconds": seconds,
        "seconds_per_condition": seconds / n,
        "null_seconds": seconds * cfg.n_null_features * len(cfg.modes) / n,
    }
    return Measured(eff, calls, scores, cost, floor)
