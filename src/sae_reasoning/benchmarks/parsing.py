"""Parse raw benchmark rows into one normalised shape (answers are scored in answers.py).

Each benchmark arrives in its native columns (see ``NATIVE_COLUMNS``). ``normalize_raw``
turns such a table into rows of ``question``, ``answer`` (the final answer, normalised,
as a string), ``answer_type`` ("numeric" | "text" | "choice") and ``choices``, plus
``template`` (the optional raw column of that name: problems instantiated from the same
template share it, e.g. reasoning-gym's gsm_symbolic; null when the source has none) and
``solution`` (the gold worked solution without its final answer, where the benchmark
provides one: GSM8K's text before ``####``; null otherwise). Every row is checked before
anything is returned; malformed rows raise one ``ValueError`` that names the catalog
entry, the (0-based, positional) row number and the problem.

The same normalisation is used for scoring (``answers.answers_match``), so a model's
output and the gold answer are compared on equal terms: numbers numerically, text
case-insensitively.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import pandas as pd

BENCHMARKS = ("gsm8k", "math", "logic")

NATIVE_COLUMNS: dict[str, tuple[str, ...]] = {
    "gsm8k": ("question", "answer"),
    "math": ("problem", "solution", "level", "type"),
    "logic": ("question", "answer"),  # plus an optional `choices` column
}

ANSWER_TYPES = ("numeric", "text", "choice")

# Extra raw columns a benchmark table may carry on top of its native ones (source: where
# rows come from, e.g. "reasoning-gym gsm_symbolic").
OPTIONAL_COLUMNS = ("template", "source")

# Columns of a normalised table (``normalize_raw``).
NORMALIZED_COLUMNS = [
    "source_index",
    "question",
    "answer",
    "answer_type",
    "choices",
    "template",
    "solution",
    "source",
]

# The final-answer marker of worked solutions (GSM8K's ``#### 42``), in prompts and in
# the model's own generated solutions.
ANSWER_MARKER = "####"

# How many malformed rows one error message lists.
MAX_REPORTED_ERRORS = 5


class RowError(ValueError):
    """One row's problem; collected by ``normalize_raw`` into a single ValueError."""


# --------------------------------------------------------------------------- numbers

_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_FRACTION_RE = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")
_LATEX_FRAC_RE = re.compile(r"^([+-]?)\\[dt]?frac\{?([+-]?\d+)\}?\{?([+-]?\d+)\}?$")


def parse_number(text: Any) -> Fraction | None:
    """The exact value of a number written as text, or None if it is not a number.

    Accepts thousands separators (``1,234``), signs, decimals, ``3/4``, ``\\frac{3}{4}``,
    a leading ``$`` and a trailing ``%``/``\\%`` (kept as the bare number, as GSM8K does).
    """
    if text is None:
        return None
    s = str(text).strip()
    s = s.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "")
    s = re.sub(r"\\?%$", "", s).strip()
    if re.search(r"\d\.$", s):  # a sentence's full stop: "42."
        s = s[:-1]
    if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?", s):  # thousands separators
        s = s.replace(",", "")
    if re.fullmatch(r"[+-]\s+\d.*", s):  # "- 5"
        s = s.replace(" ", "")
    if _NUMBER_RE.match(s):
        try:
            value = Fraction(s)
        except (ValueError, ZeroDivisionError):
            return None
        return value
    m = _FRACTION_RE.match(s) or _LATEX_FRAC_RE.match(s.replace(" ", ""))
    if m:
        groups = m.groups()
        sign = -1 if (len(groups) == 3 and groups[0] == "-") else 1
        num, den = int(groups[-2]), int(groups[-1])
        if den == 0:
            return None
        return sign * Fraction(num, den)
    return None


def format_number(value: Fraction, fraction: bool = False) -> str:
    """Canonical text of a number: ``12``, ``-0.5``, ``9281.25``; ``1/3`` if not a
    terminating decimal or if ``fraction`` (the source wrote a fraction: keep its form)."""
    if value.denominator == 1:
        return str(value.numerator)
    if fraction:
        return f"{value.numerator}/{value.denominator}"
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # terminating decimal: write it exactly
        text = f"{float(value):.15f}".rstrip("0").rstrip(".")
        if Fraction(text) == value:
            return text
    return f"{value.numerator}/{value.denominator}"


# --------------------------------------------------------------------------- GSM8K


def parse_gsm8k_answer(solution: Any) -> str:
    """The final number of a GSM8K worked solution (``... #### 1,234`` -> ``"1234"``)."""
    if not isinstance(solution, str) or "####" not in solution:
        raise RowError("answer has no '#### <number>' final line")
    final_line = solution.rsplit("####", 1)[1].strip().split("\n", 1)[0]
    raw = final_line.strip()
    value = parse_number(raw)
    if value is None:
        raise RowError(f"the '####' final line is not a number: {raw[:40]!r}")
    return format_number(value)


def gsm8k_solution(solution: Any) -> str | None:
    """The worked part of a GSM8K solution: the text before its ``####`` final line, with
    blank lines removed (a blank line separates few-shot blocks); None when it is empty."""
    if not isinstance(solution, str) or ANSWER_MARKER not in solution:
        return None
    work = solution.rsplit(ANSWER_MARKER, 1)[0]
    lines = [line.rstrip() for line in work.strip().splitlines() if line.strip()]
    return "\n".join(lines) or None


# --------------------------------------------------------------------------- MATH


def extract_boxed(solution: Any) -> str:
    """Content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) in a solution.

    Braces nest (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); the brace-less form
    ``\\boxed 5`` is accepted too, as in a few MATH solutions.
    """
    if not isinstance(solution, str):
        raise RowError("solution is not text")
    starts = [m for m in re.finditer(r"\\(boxed|fbox)\b", solution)]
    if not starts:
        raise RowError("solution has no \\boxed{...} final answer")
    m = starts[-1]
    i = m.end()
    rest = solution[i:]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        token = re.match(r"\s*([^\s$]+)", rest)
        if token:
            return token.group(1)
    while i < len(solution) and solution[i].isspace():
        i += 1
    if i >= len(solution) or solution[i] != "{":
        raise RowError("\\boxed has no {...} argument")
    depth = 0
    for j in range(i, len(solution)):
        c = solution[j]
        if c == "{" and solution[j - 1] != "\\":
            depth += 1
        elif c == "}" and solution[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                content = solution[i + 1 : j].strip()
                if not content:
                    raise RowError("\\boxed{} is empty")
                return content
    raise RowError("\\boxed{... has unbalanced braces")


_LATEX_STRIP = (
    (r"\left", ""),
    (r"\right", ""),
    (r"\!", ""),
    (r"\,", ""),
    (r"\;", ""),
    (r"\dfrac", r"\frac"),
    (r"\tfrac", r"\frac"),
    ("^\\circ", ""),
    ("^{\\circ}", ""),
    ("\\%", ""),
    ("\\$", ""),
    ("$", ""),
)


def normalize_latex(text: str) -> str:
    """Light MATH-style normalisation: drop sizing/spacing macros, units markers, spaces."""
    s = str(text).strip()
    for old, new in _LATEX_STRIP:
        s = s.replace(old, new)
    s = re.sub(r"\\text\{\s*\}", "", s)
    s = re.sub(r"\\(text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\2", s)
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


def normalize_math_answer(boxed: str) -> tuple[str, str]:
    """``(answer, answer_type)`` of a MATH final answer: numbers canonical, else LaTeX text."""
    value = parse_number(boxed)
    if value is None:
        value = parse_number(normalize_latex(boxed))
    if value is not None:
        return format_number(value, fraction="/" in boxed or "frac" in boxed), "numeric"
    text = normalize_latex(boxed)
    if not text:
        raise RowError("\\boxed{} answer is empty after normalisation")
    return text, "text"


# --------------------------------------------------------------------------- logic


def clean_text_answer(text: Any) -> str:
    s = re.sub(r"\s+", " ", str(text)).strip()
    return s.rstrip(".").strip()


def coerce_choices(value: Any) -> list[str]:
    """A choices cell as a list of strings ([] when absent): lists, arrays, JSON text."""
    if _is_missing(value) and not isinstance(value, str):
        return []
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return []
        if s.startswith("["):
            try:
                value = json.loads(s)
            except json.JSONDecodeError as exc:
                raise RowError(f"choices is not a JSON list: {s[:40]!r}") from exc
        else:
            raise RowError(f"choices must be a list of strings, got text {s[:40]!r}")
    if not isinstance(value, Sequence) and not hasattr(value, "tolist"):
        raise RowError(f"choices must be a list of strings, got {type(value).__name__}")
    items = value.tolist() if hasattr(value, "tolist") else list(value)
    choices = [clean_text_answer(c) for c in items]
    if any(not c for c in choices):
        raise RowError("choices contain an empty string")
    if len(set(c.lower() for c in choices)) != len(choices):
        raise RowError(f"choices are not distinct: {choices}")
    return choices


def match_choice(answer: Any, choices: Sequence[str]) -> str | None:
    """The choice an answer names (case/space/full-stop insensitive; or its letter A, B..)."""
    a = clean_text_answer(answer).lower()
    for c in choices:
        if c.lower() == a:
            return c
    a = a.strip("()")
    if len(a) == 1 and a.isalpha():
        idx = ord(a) - ord("a")
        if 0 <= idx < len(choices):
            return choices[idx]
    return None


def normalize_logic_answer(answer: Any, choices: Sequence[str]) -> tuple[str, str]:
    """``(answer, answer_type)`` of a logic row: the matching choice, a number, or text."""
    if choices:
        chosen = match_choice(answer, choices)
        if chosen is None:
            raise RowError(f"answer {str(answer)[:40]!r} is not among choices {list(choices)}")
        return chosen, "choice"
    value = parse_number(answer)
    if value is not None:
        return format_number(value), "numeric"
    return clean_text_answer(answer), "text"


# --------------------------------------------------------------------------- tables


def _is_missing(value: Any) -> bool:
    """None, NaN, pd.NA or blank text (lists and arrays are never 'missing')."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, Sequence) or hasattr(value, "tolist"):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _question_text(value: Any, column: str) -> str:
    if _is_missing(value):
        raise RowError(f"{column} is empty")
    return str(value).strip()


def _optional_text(value: Any) -> str | None:
    """An optional cell (template, source) as text (``12`` -> ``"12"``); None when absent."""
    if _is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _normalize_row(benchmark: str, row: dict[str, Any]) -> dict[str, Any]:
    extra = {
        "template": _optional_text(row.get("template")),
        "source": _optional_text(row.get("source")),
    }
    if benchmark == "gsm8k":
        question = _question_text(row["question"], "question")
        if _is_missing(row["answer"]):
            raise RowError("answer is empty")
        return {
            "question": question,
            "answer": parse_gsm8k_answer(row["answer"]),
            "answer_type": "numeric",
            "choices": [],
            **extra,
            "solution": gsm8k_solution(row["answer"]),
        }
    # MATH solutions state the final answer inside the text (\boxed{}), so no worked part
    # can be shown without it; logic rows have no solutions.
    extra["solution"] = None
    if benchmark == "math":
        question = _question_text(row["problem"], "problem")
        if _is_missing(row["solution"]):
            raise RowError("solution is empty")
        answer, answer_type = normalize_math_answer(extract_boxed(row["solution"]))
        return {
            "question": question,
            "answer": answer,
            "answer_type": answer_type,
            "choices": [],
            **extra,
        }
    if benchmark == "logic":
        question = _question_text(row["question"], "question")
        if _is_missing(row["answer"]):
            raise RowError("answer is empty")
        choices = coerce_choices(row.get("choices"))
        answer, answer_type = normalize_logic_answer(row["answer"], choices)
        return {
            "question": question,
            "answer": answer,
            "answer_type": answer_type,
            "choices": choices,
            **extra,
        }
    raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")


def check_native_columns(raw: pd.DataFrame, benchmark: str, name: str | None = None) -> None:
    """Raise if ``raw`` lacks one of the benchmark's native columns."""
    name = name or f"{benchmark}_raw"
    if benchmark not in NATIVE_COLUMNS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    if not isinstance(raw, pd.DataFrame):
        raise ValueError(f"{name}: expected a pandas DataFrame, got {type(raw).__name__}")
    missing = [c for c in NATIVE_COLUMNS[benchmark] if c not in raw.columns]
    if missing:
        raise ValueError(
            f"{name}: missing native column(s) {missing} for benchmark {benchmark!r}; "
            f"expected {list(NATIVE_COLUMNS[benchmark])}, found {list(raw.columns)}"
        )


def normalize_raw(raw: pd.DataFrame, benchmark: str, name: str | None = None) -> pd.DataFrame:
    """Normalise a raw benchmark table (native columns) into one row per problem.

    Returns ``NORMALIZED_COLUMNS``: ``source_index`` (0-based position in ``raw``),
    ``question``, ``answer``, ``answer_type``, ``choices``, ``template`` (from an optional
    raw ``template`` column, else null) and ``solution`` (GSM8K's worked solution, else
    null). All rows are checked first; if any is malformed a ``ValueError`` lists the
    first few, each as ``"<name> row <i>: <problem>"``.
    """
    if len(raw) == 0:
        # An empty file loads as a table without rows (and often without columns): say so,
        # rather than report its columns as missing.
        raise ValueError(
            f"{benchmark}: the raw table is empty"
            + (f" (dataset `{name}`)" if name else "")
            + "; the benchmark needs at least one row"
        )
    name = name or f"{benchmark}_raw"
    check_native_columns(raw, benchmark, name)
    columns = list(NATIVE_COLUMNS[benchmark]) + [
        c
        for c in ("choices", *OPTIONAL_COLUMNS)
        if c in raw.columns and c not in NATIVE_COLUMNS[benchmark]
    ]
    records = raw[columns].to_dict("records")
    rows, errors = [], []
    for i, record in enumerate(records):
        try:
            rows.append({"source_index": i, **_normalize_row(benchmark, record)})
        except RowError as exc:
            errors.append(f"{name} row {i}: {exc}")
    if errors:
        shown = "\n  ".join(errors[:MAX_REPORTED_ERRORS])
        more = len(errors) - MAX_REPORTED_ERRORS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise ValueError(
            f"{name}: {len(errors)} of {len(records)} rows are malformed "
            f"(benchmark {benchmark!r}):\n  {shown}{tail}"
        )
    return pd.DataFrame(rows, columns=NORMALIZED_COLUMNS)
