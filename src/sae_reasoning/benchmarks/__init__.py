"""Reasoning benchmarks as plain Python: sources, parsing/normalisation, few-shot prompts.

Usable without Kedro, e.g. in a notebook::

    from sae_reasoning.benchmarks import generate_native, normalize_raw, build_examples
    raw = generate_native("math", {"basic_arithmetic": {}}, size=50, seed=0)
    rows = normalize_raw(raw, "math")
"""

from sae_reasoning.benchmarks.answers import answers_match, clean_generation, extract_answer
from sae_reasoning.benchmarks.parsing import (
    ANSWER_MARKER,
    ANSWER_TYPES,
    BENCHMARKS,
    NATIVE_COLUMNS,
    extract_boxed,
    normalize_raw,
    parse_gsm8k_answer,
    parse_number,
)
from sae_reasoning.benchmarks.prompts import (
    EXAMPLE_COLUMNS,
    PROMPT_COLUMNS,
    SHOT_COLUMNS,
    build_examples,
    build_prompts,
    clusters,
    format_prompt,
)
from sae_reasoning.benchmarks.sources import as_dataframe, generate_native, load_hf_dataframe

__all__ = [
    "ANSWER_MARKER",
    "ANSWER_TYPES",
    "BENCHMARKS",
    "EXAMPLE_COLUMNS",
    "NATIVE_COLUMNS",
    "PROMPT_COLUMNS",
    "SHOT_COLUMNS",
    "answers_match",
    "as_dataframe",
    "build_examples",
    "build_prompts",
    "clean_generation",
    "clusters",
    "extract_answer",
    "extract_boxed",
    "format_prompt",
    "generate_native",
    "load_hf_dataframe",
    "normalize_raw",
    "parse_gsm8k_answer",
    "parse_number",
]
