"""From normalised benchmark rows to evaluation examples, few-shot shots and prompts.

Per benchmark (``select_rows``): rows with over-long questions are dropped and repeated
questions kept once; a seeded permutation then puts the first ``shot_pool`` rows in a
pool that few-shot demonstrations come from, and the next ``n_examples`` rows become
evaluation examples. Pool rows never appear as examples, and the examples do not change
when ``n_shots`` does. Every example of a benchmark gets the same shots.

Prompts are plain-text completions, usable by base and instruct models alike::

    Question: <shot question>
    Answer: <shot answer>

    Question: <question>
    Answer:

``target`` is the gold continuation (`` 42``). Choice questions also carry
``choice_targets`` (one continuation per choice; the prediction is the choice whose
continuation has the highest summed log-probability); open answers are scored by greedy
decoding cut at the first newline and compared with ``parsing.answers_match``.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping
from typing import Any

import pandas as pd

from sae_reasoning.benchmarks.parsing import BENCHMARKS

EXAMPLE_COLUMNS = ["id", "benchmark", "question", "answer", "answer_type", "choices", "split"]
SHOT_COLUMNS = ["id", "benchmark", "shot", "question", "answer", "answer_type", "choices"]
PROMPT_COLUMNS = [
    "id", "benchmark", "prompt", "target", "answer", "answer_type", "choices",
    "choice_targets", "chance", "split",
]
SPLITS = ("select", "heldout")

DEFAULT_FORMAT = {
    "question_prefix": "Question: ",
    "answer_prefix": "Answer:",
    "shot_separator": "\n\n",
    "show_choices": False,  # add a "Choices: a, b" line to choice questions
    "choices_prefix": "Choices: ",
}


def _rng(seed: int, *parts: str) -> random.Random:
    return random.Random(zlib.crc32(":".join([str(seed), *parts]).encode()))


def example_id(benchmark: str, source_index: int) -> str:
    """``gsm8k-00012``: the benchmark and the row's position in its raw table."""
    return f"{benchmark}-{int(source_index):05d}"


def _balanced_pick(pool: pd.DataFrame, k: int) -> pd.DataFrame:
    """``k`` pool rows; for choice questions, answers taken in turn so labels stay balanced."""
    if k <= 0:
        return pool.iloc[:0]
    if not (pool["answer_type"] == "choice").all():
        return pool.iloc[:k]
    by_answer: dict[str, list[int]] = {}
    for pos, answer in enumerate(pool["answer"]):
        by_answer.setdefault(answer, []).append(pos)
    picked: list[int] = []
    while len(picked) < min(k, len(pool)):
        for positions in by_answer.values():
            if positions and len(picked) < k:
                picked.append(positions.pop(0))
    return pool.iloc[picked]  # in turn: answers alternate within the prompt


def select_rows(
    normalized: pd.DataFrame,
    benchmark: str,
    *,
    n_examples: int | None,
    n_shots: int,
    shot_pool: int,
    seed: int,
    max_question_chars: int | None = None,
    balance_answers: bool = False,
    name: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(examples, shots)`` of one benchmark from its normalised rows (see module doc).

    ``examples`` has ``id`` + the normalised columns, ordered by ``source_index``;
    ``shots`` the ``n_shots`` demonstrations, in prompt order. With ``balance_answers``,
    choice examples are taken answer by answer in turn, so every answer is (as near as
    the rows allow) equally frequent and a constant guess scores the chance level.
    """
    name = name or f"{benchmark}_raw"
    if n_shots < 0 or shot_pool < n_shots:
        raise ValueError(f"{benchmark}: need 0 <= n_shots <= shot_pool, got "
                         f"n_shots={n_shots}, shot_pool={shot_pool}")
    rows = normalized
    if max_question_chars:
        rows = rows[rows["question"].str.len() <= int(max_question_chars)]
    rows = rows.drop_duplicates(subset="question", keep="first")
    order = list(range(len(rows)))
    _rng(seed, benchmark, "order").shuffle(order)
    rows = rows.iloc[order].reset_index(drop=True)
    pool, rest = rows.iloc[:shot_pool], rows.iloc[shot_pool:]
    available = len(rest)
    if n_examples is None:
        n_examples = available
    if n_examples > available:
        raise ValueError(
            f"{name}: {n_examples} {benchmark} examples requested but only {available} usable "
            f"rows remain ({len(normalized)} rows, {len(normalized) - len(rows)} dropped as "
            f"too long or repeated, {len(pool)} kept for the few-shot pool); "
            f"generate more rows (the catalog entry's `size`) or lower n_examples"
        )
    if balance_answers:
        examples = _balanced_pick(rest, int(n_examples))
    else:
        examples = rest.iloc[: int(n_examples)]
    examples = examples.sort_values("source_index").reset_index(drop=True)
    shots = _balanced_pick(pool, int(n_shots)).reset_index(drop=True)
    for frame in (examples, shots):
        frame.insert(0, "benchmark", benchmark)
        frame.insert(0, "id", [example_id(benchmark, i) for i in frame["source_index"]])
    shots.insert(2, "shot", range(len(shots)))
    return examples, shots


def assign_split(examples: pd.DataFrame, select_fraction: float, seed: int) -> pd.Series:
    """``"select"``/``"heldout"`` per row: per benchmark, a seeded ``select_fraction`` share
    (rounded) is ``select``; the rest is held out."""
    if not 0.0 <= float(select_fraction) <= 1.0:
        raise ValueError(f"select_fraction must be in [0, 1], got {select_fraction}")
    split = pd.Series("heldout", index=examples.index, dtype=object)
    for benchmark, group in examples.groupby("benchmark", sort=False):
        positions = list(group.index)
        _rng(seed, str(benchmark), "split").shuffle(positions)
        n_select = int(round(float(select_fraction) * len(positions)))
        split.loc[positions[:n_select]] = "select"
    return split


def build_examples(
    normalized: Mapping[str, pd.DataFrame], config: Mapping[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(examples, shots)`` over all benchmarks from their normalised tables.

    ``config`` is the ``data_loading`` parameter block: ``seed``, ``select_fraction``
    and ``benchmarks.<name>.{n_examples, n_shots, shot_pool, max_question_chars,
    balance_answers}``.
    A benchmark with ``n_examples: 0`` is left out.
    """
    seed = int(config.get("seed", 0))
    settings = config.get("benchmarks") or {}
    all_examples, all_shots = [], []
    for benchmark, frame in normalized.items():
        if benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
        opts = dict(settings.get(benchmark) or {})
        if opts.get("n_examples", None) == 0:
            continue
        n_shots = int(opts.get("n_shots", 0))
        examples, shots = select_rows(
            frame,
            benchmark,
            n_examples=opts.get("n_examples"),
            n_shots=n_shots,
            shot_pool=int(opts.get("shot_pool", n_shots)),
            seed=seed,
            max_question_chars=opts.get("max_question_chars"),
            balance_answers=bool(opts.get("balance_answers", False)),
        )
        all_examples.append(examples)
        all_shots.append(shots)
    examples = pd.concat(all_examples, ignore_index=True) if all_examples else None
    if examples is None or examples.empty:
        raise ValueError("data_loading: no examples selected; set n_examples > 0 for a benchmark")
    examples["split"] = assign_split(examples, config.get("select_fraction", 0.5), seed).values
    shots = pd.concat(all_shots, ignore_index=True)
    return examples[EXAMPLE_COLUMNS], shots[SHOT_COLUMNS]


def _as_list(choices: Any) -> list[str]:
    if choices is None:
        return []
    if hasattr(choices, "tolist"):
        choices = choices.tolist()
    return [str(c) for c in choices] if not isinstance(choices, float) else []


def format_question(question: str, choices: list[str], fmt: Mapping[str, Any]) -> str:
    """One question block, ending right before the answer."""
    text = f"{fmt['question_prefix']}{question}"
    if choices and fmt.get("show_choices"):
        text += f"\n{fmt['choices_prefix']}{', '.join(choices)}"
    return f"{text}\n{fmt['answer_prefix']}"


def format_prompt(
    question: str, choices: list[str], shots: list[tuple[str, list[str], str]],
    fmt: Mapping[str, Any] | None = None,
) -> str:
    """Few-shot prompt: each ``(question, choices, answer)`` shot answered, then the question."""
    fmt = {**DEFAULT_FORMAT, **(fmt or {})}
    blocks = [f"{format_question(q, c, fmt)} {a}" for q, c, a in shots]
    blocks.append(format_question(question, choices, fmt))
    return fmt["shot_separator"].join(blocks)


def build_prompts(
    examples: pd.DataFrame, shots: pd.DataFrame, fmt: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """The prompts table (``PROMPT_COLUMNS``): one few-shot prompt per example."""
    fmt = {**DEFAULT_FORMAT, **(fmt or {})}
    overlap = set(examples["id"]) & set(shots["id"])
    if overlap:
        raise ValueError(f"few-shot rows also appear as examples: {sorted(overlap)[:5]}")
    shot_lists: dict[str, list[tuple[str, list[str], str]]] = {}
    for benchmark, group in shots.sort_values("shot").groupby("benchmark", sort=False):
        shot_lists[str(benchmark)] = [
            (q, _as_list(c), a)
            for q, c, a in zip(group["question"], group["choices"], group["answer"], strict=True)
        ]
    records = []
    for row in examples.to_dict("records"):
        choices = _as_list(row["choices"]) if row["answer_type"] == "choice" else []
        records.append({
            "id": row["id"],
            "benchmark": row["benchmark"],
            "prompt": format_prompt(row["question"], choices,
                                    shot_lists.get(row["benchmark"], []), fmt),
            "target": f" {row['answer']}",
            "answer": row["answer"],
            "answer_type": row["answer_type"],
            "choices": choices,
            "choice_targets": [f" {c}" for c in choices],
            "chance": 1.0 / len(choices) if choices else 0.0,
            "split": row["split"],
        })
    return pd.DataFrame(records, columns=PROMPT_COLUMNS)
