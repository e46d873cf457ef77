"""What the causal stage analyses: which benchmarks, which examples, and how they cluster.

- A benchmark is analysed only where the clean model is above chance (chance.py: exact
  binomial test against the best constant answer), unless `require_above_chance` is off:
  ablating features of a model that does not solve the task measures floor effects.
- `examples: correct` keeps only the examples the clean model answers correctly (per
  baseline scores): "which features does it use when it solves the problem".
Examples that share a template (GSM8K-style problems instantiated from one template) are
one cluster for the tests (benchmarks.prompts.clusters): they resample clusters, not rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sae_reasoning.scoring import EncodedBenchmark

EXAMPLES = ("all", "correct")


def subset(encoded: list[EncodedBenchmark], split: str, cap: int, seed: int) -> list[EncodedBenchmark]:
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


def choose_benchmarks(encoded: list[EncodedBenchmark], chance: dict[str, dict] | None,
                      require_above_chance: bool) -> tuple[list[EncodedBenchmark], dict[str, str]]:
    """(benchmarks to analyse, {skipped benchmark: reason})."""
    keep, skipped = [], {}
    for b in encoded:
        c = (chance or {}).get(b.name)
        if require_above_chance and c is None:
            skipped[b.name] = "no baseline scores for it"
        elif require_above_chance and not c["above_chance"]:
            skipped[b.name] = (f"clean accuracy {c['accuracy']:.1%} is not above chance {c['chance']:.1%} "
                               f"(exact binomial test p = {c['p_value']:.2g}, alpha {c['alpha']})")
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
