"""The numerical floor: how far float rounding alone moves a score, measured per run, so that
effects within it count as exactly zero.

A feature that fires weakly where it is ablated moves a gold log-prob by 1e-7..1e-5, about
as far as float32 rounding moves it when the same examples are only batched differently (the
matmuls then sum in another order: SmolLM2-135M on this CPU, 50 MATH examples, batch 16 vs
8: median 3e-6, max 2e-5). The sign of such a difference is set by rounding, so its
sign-flip p-value would be noise that any change of batching, device or dtype redraws.

A condition's scores come from the clean residual at the SAE's layer (recorded by the clean
pass) through the blocks above it, on the clean cached context: its rows then run in other
matmul shapes than the clean pass's (other conditions' rows stacked with them, the SAE's
arithmetic). So, in the same sweep, the clean answer rows run again from that residual, one
example to a pass (scoring.ALONE: the smallest shapes, the ones that change the kernels
most), and the identity splice (the SAE spliced in, nothing ablated) is scored like every
condition; both differ from the clean scores by rounding alone. The floor of an endpoint is
`factor` x the largest per-example |difference| of either. A condition's per-example score
within the floor of its clean score is taken to be the clean score (`snap`), before any
mean, CI, test or threshold is computed; the report states the floor.
(The blocks below the layer run once, in the clean pass every condition starts from: their
rounding is the same for clean and conditions, and no part of an effect.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sae_reasoning.scoring import ALONE

# endpoint -> score column the floor applies to (accuracy is discrete and has none)
COLUMNS = {"logprob": "gold_logprob", "logit_diff": "logit_diff"}
IDENTITY = "splice:none"


@dataclass(frozen=True)
class NumericalFloor:
    floor: dict[str, float]  # endpoint -> |score change| at or below which it counts as 0
    rebatched: dict[str, float]  # endpoint -> max |change| of the clean scores, one example a pass
    identity: dict[str, float]  # endpoint -> max |change| under the identity splice
    factor: float
    batch_sizes: tuple[int, int]  # examples per pass: the scoring batch size, and 1

    def as_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "batch_sizes": list(self.batch_sizes),
            "rule": (
                f"per-example differences from clean within {self.factor:g} x the largest "
                f"rounding change (clean answer rows rescored above the SAE's layer "
                f"{self.batch_sizes[1]} example a pass instead of up to {self.batch_sizes[0]}; "
                f"identity splice) count as 0"
            ),
        }


def _max_change(a: pd.DataFrame, b: pd.DataFrame, column: str) -> float:
    m = a[["row", column]].merge(b[["row", column]], on="row", suffixes=("_a", "_b"))
    d = (m[f"{column}_a"] - m[f"{column}_b"]).abs().dropna()
    return float(d.max()) if len(d) else 0.0


def check_factor(factor: float) -> None:
    if factor < 0:
        raise ValueError(f"causal.numerical_floor_factor {factor!r}: expected >= 0")


def measure_floor(scores: dict[str, pd.DataFrame], factor: float, batch_size: int):
    """The floor from `scores` of a sweep scored with alone=True (scoring.Scorer.score):
    clean, ALONE (the clean rows one example a pass; BLAS libraries switch kernels and
    blocking with the row count, most at a few rows: a halved batch can keep the same
    kernels, 8 vs 4 rows change no bit of a tiny model) and the identity splice, when scored.
    `batch_size`: the sweep's."""
    check_factor(factor)
    if ALONE not in scores:
        raise ValueError(
            f"measure_floor needs the sweep's {ALONE!r} scores (Scorer.score(alone=True))"
        )
    again, clean = scores[ALONE], scores["clean"]
    rebatched = {e: _max_change(clean, again, c) for e, c in COLUMNS.items()}
    identity = {
        e: _max_change(clean, scores[IDENTITY], c) if IDENTITY in scores else 0.0
        for e, c in COLUMNS.items()
    }
    floor = {e: factor * max(rebatched[e], identity[e]) for e in COLUMNS}
    return NumericalFloor(floor, rebatched, identity, factor, (batch_size, 1))


def snap(scores: dict[str, pd.DataFrame], floor: NumericalFloor) -> dict[str, pd.DataFrame]:
    """Every condition's scores with each per-example value within the floor of its clean
    value replaced by the clean value (clean itself unchanged, ALONE left out; new frames)."""
    clean = scores["clean"].set_index("row")
    out = {"clean": scores["clean"]}
    for name, df in scores.items():
        if name in ("clean", ALONE):
            continue
        df = df.copy()
        for e, col in COLUMNS.items():
            if col not in df:
                continue
            c = clean[col].reindex(df["row"]).to_numpy()
            a = df[col].to_numpy()
            within = np.abs(a - c) <= floor.floor[e]  # NaN compares False: left as it is
            df[col] = np.where(within, c, a)
        out[name] = df
    return out
