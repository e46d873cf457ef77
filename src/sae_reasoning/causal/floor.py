"""The numerical floor: how far float rounding alone moves a score, measured per run, so that
effects within it count as exactly zero.

A feature that fires weakly where it is ablated moves a gold log-prob by 1e-7..1e-5, about
as far as float32 rounding moves it when the same examples are only batched differently (the
matmuls then sum in another order: SmolLM2-135M on this CPU, 50 MATH examples, batch 16 vs
8: median 3e-6, max 2e-5). The sign of such a difference is set by rounding, so its
sign-flip p-value would be noise that any change of batching, device or dtype redraws.

So the clean model is scored a second time on the held-out examples in another batching,
and the identity splice (the SAE spliced in, nothing ablated) is scored like every
condition; both differ from the clean scores by rounding alone. The floor of an endpoint is
`factor` x the largest per-example |difference| of either. A condition's per-example score
within the floor of its clean score is taken to be the clean score (`snap`), before any
mean, CI, test or threshold is computed; the report states the floor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

# endpoint -> score column the floor applies to (accuracy is discrete and has none)
COLUMNS = {"logprob": "gold_logprob", "logit_diff": "logit_diff"}
IDENTITY = "splice:none"


@dataclass(frozen=True)
class NumericalFloor:
    floor: dict[str, float]  # endpoint -> |score change| at or below which it counts as 0
    rebatched: dict[str, float]  # endpoint -> max |change| of the clean scores, rebatched
    identity: dict[str, float]  # endpoint -> max |change| under the identity splice
    factor: float
    batch_sizes: tuple[int, int]  # the scoring batch size, and the rebatched one

    def as_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "batch_sizes": list(self.batch_sizes),
            "rule": (
                f"per-example differences from clean within {self.factor:g} x the largest "
                f"rounding change (clean rescored at batch size {self.batch_sizes[1]} instead "
                f"of {self.batch_sizes[0]}; identity splice) count as 0"
            ),
        }


def _max_change(a: pd.DataFrame, b: pd.DataFrame, column: str) -> float:
    m = a[["row", column]].merge(b[["row", column]], on="row", suffixes=("_a", "_b"))
    d = (m[f"{column}_a"] - m[f"{column}_b"]).abs().dropna()
    return float(d.max()) if len(d) else 0.0


def rebatched_size(batch_size: int) -> int:
    """Another batch size, so that the matmuls sum in another order: 1, every example alone
    (BLAS libraries switch kernels and blocking with the row count, most at a few rows; a
    halved batch can keep the same kernels: 8 vs 4 rows change no bit of a tiny model)."""
    return 1 if batch_size > 1 else 2


def measure_floor(scorer, heldout, scores: dict[str, pd.DataFrame], factor: float):
    """The floor from `scores` (clean and the identity splice, when scored) and one more clean
    scoring of `heldout` by `scorer` (a scoring.Scorer) at rebatched_size(batch size)."""
    if factor < 0:
        raise ValueError(f"causal.numerical_floor_factor {factor!r}: expected >= 0")
    alt = rebatched_size(scorer.batch_size)
    again = dataclasses.replace(scorer, batch_size=alt).baseline(heldout, progress=None)
    clean = scores["clean"]
    rebatched = {e: _max_change(clean, again, c) for e, c in COLUMNS.items()}
    identity = {
        e: _max_change(clean, scores[IDENTITY], c) if IDENTITY in scores else 0.0
        for e, c in COLUMNS.items()
    }
    floor = {e: factor * max(rebatched[e], identity[e]) for e in COLUMNS}
    return NumericalFloor(floor, rebatched, identity, factor, (scorer.batch_size, alt))


def snap(scores: dict[str, pd.DataFrame], floor: NumericalFloor) -> dict[str, pd.DataFrame]:
    """Every condition's scores with each per-example value within the floor of its clean
    value replaced by the clean value (clean itself unchanged; new frames)."""
    clean = scores["clean"].set_index("row")
    out = {"clean": scores["clean"]}
    for name, df in scores.items():
        if name == "clean":
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
