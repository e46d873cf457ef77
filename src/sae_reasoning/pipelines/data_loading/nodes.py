"""Nodes of the data_loading pipeline: thin wrappers over ``sae_reasoning.benchmarks``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from sae_reasoning.benchmarks.parsing import normalize_raw
from sae_reasoning.benchmarks.prompts import build_examples, build_prompts
from sae_reasoning.benchmarks.sources import as_dataframe


def normalize_benchmark(raw: Any, benchmark: str) -> pd.DataFrame:
    """One raw benchmark table (native columns) -> normalised rows; raises on bad rows."""
    name = f"{benchmark}_raw"
    return normalize_raw(as_dataframe(raw, name=name), benchmark, name=name)


# One node function per benchmark: Kedro shows each by name, and its argument names the
# catalog entry it reads.
def normalize_gsm8k(gsm8k_raw: Any) -> pd.DataFrame:
    return normalize_benchmark(gsm8k_raw, "gsm8k")


def normalize_math(math_raw: Any) -> pd.DataFrame:
    return normalize_benchmark(math_raw, "math")


def normalize_logic(logic_raw: Any) -> pd.DataFrame:
    return normalize_benchmark(logic_raw, "logic")


NORMALIZERS: dict[str, Callable[[Any], pd.DataFrame]] = {
    "gsm8k": normalize_gsm8k,
    "math": normalize_math,
    "logic": normalize_logic,
}


def normalizer(benchmark: str) -> Callable[[Any], pd.DataFrame]:
    """The node function that normalises `benchmark`'s raw table."""
    if benchmark not in NORMALIZERS:
        raise ValueError(
            f"data_loading: no normalizer for benchmark {benchmark!r}; "
            f"known: {', '.join(NORMALIZERS)}"
        )
    return NORMALIZERS[benchmark]


def select_examples(
    gsm8k: pd.DataFrame, math: pd.DataFrame, logic: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluation examples (with their select/heldout split) and the few-shot shots."""
    return build_examples({"gsm8k": gsm8k, "math": math, "logic": logic}, params)


def make_prompts(
    examples: pd.DataFrame, few_shot_examples: pd.DataFrame, params: dict[str, Any]
) -> pd.DataFrame:
    """One few-shot prompt per example, with its gold target and choice continuations
    (worked-solution prompts where ``worked_solutions`` asks for them)."""
    return build_prompts(
        examples, few_shot_examples, params.get("prompt_format"), params.get("benchmarks")
    )
