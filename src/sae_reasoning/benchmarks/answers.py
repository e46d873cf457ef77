"""Scoring a model's answer against the gold one, after the normalisation of parsing.py:
greedy continuations cut to their answer, answers compared by type, and the final answer
extracted from a generated worked solution."""

from __future__ import annotations

import re
from typing import Any

from sae_reasoning.benchmarks.parsing import (
    ANSWER_MARKER,
    ANSWER_TYPES,
    clean_text_answer,
    normalize_latex,
    parse_number,
)


def clean_generation(text: str) -> str:
    """A greedy continuation cut to its answer: the text before the first newline."""
    return str(text).split("\n", 1)[0].strip()


def answers_match(prediction: Any, answer: str, answer_type: str) -> bool:
    """Whether a predicted answer equals the gold one after the same normalisation.

    numeric: compared as numbers (a trailing unit or sentence after the number is
    ignored: " 42 apples" matches "42"); text: LaTeX/space-normalised, case-insensitive;
    choice: case-insensitive equality with the choice string.
    """
    pred = clean_generation(prediction)
    if answer_type == "numeric":
        gold = parse_number(answer)
        value = parse_number(pred)
        if value is None:
            lead = re.match(r"\s*\$?\s*([+-]?[\d,]*\.?\d+(?:\s*/\s*\d+)?)", pred)
            value = parse_number(lead.group(1)) if lead else None
        return gold is not None and value is not None and value == gold
    if answer_type == "choice":
        return clean_text_answer(pred).lower() == clean_text_answer(answer).lower()
    if answer_type == "text":
        return normalize_latex(pred).lower() == normalize_latex(answer).lower()
    raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {ANSWER_TYPES}")


# A number in running text: "1,234.5", "-3", "$12", "3/4" (a sign only where it is not a
# minus between two operands: "12-3" gives 12 and 3).
_NUMBER_IN_TEXT_RE = re.compile(
    r"(?<![\w.])[+-]?\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
)


def extract_answer(
    text: Any, answer_type: str = "numeric", marker: str = ANSWER_MARKER
) -> str | None:
    """The final answer a generated worked solution states, or None if it states none.

    The first line after the first ``marker`` (``... #### 42`` -> ``"42"``): in the
    few-shot format the marker ends a solution, so the first one is the model's answer.
    Without a marker: the last number in the text (numeric answers), else the last
    non-empty line. The result is compared with the gold answer by ``answers_match``.
    """
    text = "" if text is None else str(text)
    if marker and marker in text:
        line = text.split(marker, 1)[1].strip().split("\n", 1)[0].strip()
        if line:
            return line
    if answer_type == "numeric":
        numbers = _NUMBER_IN_TEXT_RE.findall(text)
        return numbers[-1].replace("$", "") if numbers else None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None
