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
decoding cut at the first newline and compared with ``answers.answers_match``.

Worked solutions (``prompt_format.worked_solutions``, or per benchmark
``benchmarks.<name>.worked_solutions``; only where the rows carry a gold ``solution``,
today GSM8K's text before ``####``): the shots show the solution and then the final
answer after the answer marker, GSM8K's own format::

    Question: <shot question>
    Answer: <shot solution, one or more lines>
    #### <shot answer>

    Question: <question>
    Answer: <GOLD solution>
    ####

``prompt`` ends with the gold solution and the marker, so ``target`` (`` 42``) is still
the final answer, teacher-forced after the gold solution; ``generation_prompt`` ends at
``Answer:`` (the model writes its own solution from there, and its accuracy is that of
the answer it states after the marker: see ``sae_reasoning.generation``). ``prompt_format``
says which format a row has: ``"worked_solution"`` or ``"answer_only"`` (then
``generation_prompt`` equals ``prompt``).

``template``: rows instantiated from the same template share it (clusters for statistics:
``clusters``); null where the source has no templates (each row its own cluster).
"""

from __future__ import annotations

import logging
import random
import zlib
from collections.abc import Mapping
from typing import Any

import pandas as pd

from sae_reasoning.benchmarks.parsing import ANSWER_MARKER, BENCHMARKS

log = logging.getLogger(__name__)

EXAMPLE_COLUMNS = [
    "id",
    "benchmark",
    "question",
    "answer",
    "answer_type",
    "choices",
    "split",
    "template",
    "solution",
    "source",
]
SHOT_COLUMNS = [
    "id",
    "benchmark",
    "shot",
    "question",
    "answer",
    "answer_type",
    "choices",
    "template",
    "solution",
    "source",
]
PROMPT_COLUMNS = [
    "id",
    "benchmark",
    "prompt",
    "target",
    "answer",
    "answer_type",
    "choices",
    "choice_targets",
    "chance",
    "split",
    "template",
    "prompt_format",
    "generation_prompt",
    "source",
]
SPLITS = ("select", "heldout")  # assign_split's values: select ranks, heldout measures

DEFAULT_FORMAT = {
    "question_prefix": "Question: ",
    "answer_prefix": "Answer:",
    "shot_separator": "\n\n",
    "show_choices": False,  # add a "Choices: a, b" line to choice questions
    "choices_prefix": "Choices: ",
    "worked_solutions": False,  # default of benchmarks.<name>.worked_solutions
    "answer_marker": ANSWER_MARKER,  # precedes the final answer after a worked solution
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


def _usable_rows(
    normalized: pd.DataFrame, benchmark: str, seed: int, max_question_chars: int | None
) -> pd.DataFrame:
    """Rows short enough and not repeated, in the benchmark's seeded order."""
    rows = normalized
    if max_question_chars:
        rows = rows[rows["question"].str.len() <= int(max_question_chars)]
    rows = rows.drop_duplicates(subset="question", keep="first")
    order = list(range(len(rows)))
    _rng(seed, benchmark, "order").shuffle(order)
    return rows.iloc[order].reset_index(drop=True)


def _with_ids(frame: pd.DataFrame, benchmark: str) -> pd.DataFrame:
    frame.insert(0, "benchmark", benchmark)
    frame.insert(0, "id", [example_id(benchmark, i) for i in frame["source_index"]])
    return frame


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
        raise ValueError(
            f"{benchmark}: need 0 <= n_shots <= shot_pool, got "
            f"n_shots={n_shots}, shot_pool={shot_pool}"
        )
    rows = _usable_rows(normalized, benchmark, seed, max_question_chars)
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
    examples = _with_ids(examples.sort_values("source_index").reset_index(drop=True), benchmark)
    shots = _with_ids(_balanced_pick(pool, int(n_shots)).reset_index(drop=True), benchmark)
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
        frame = frame.assign(
            **{c: None for c in ("template", "solution", "source") if c not in frame.columns}
        )
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


def worked_answer(solution: str, answer: str, fmt: Mapping[str, Any]) -> str:
    """A shot's answer in the worked-solution format: ``<solution>\\n#### 42``."""
    return f"{solution}\n{fmt['answer_marker']} {answer}"


def format_prompt(
    question: str,
    choices: list[str],
    shots: list[tuple[str, list[str], str]],
    fmt: Mapping[str, Any] | None = None,
) -> str:
    """Few-shot prompt: each ``(question, choices, answer)`` shot answered, then the question.

    A shot's answer is written as given: ``worked_answer`` for worked-solution shots.
    """
    fmt = {**DEFAULT_FORMAT, **(fmt or {})}
    blocks = [f"{format_question(q, c, fmt)} {a}" for q, c, a in shots]
    blocks.append(format_question(question, choices, fmt))
    return fmt["shot_separator"].join(blocks)


def _has_solution(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def worked_solution_benchmarks(
    examples: pd.DataFrame,
    shots: pd.DataFrame,
    fmt: Mapping[str, Any] | None = None,
    benchmarks: Mapping[str, Any] | None = None,
) -> set[str]:
    """The benchmarks whose prompts show worked solutions.

    ``benchmarks.<name>.worked_solutions`` decides for one benchmark; where it is unset,
    ``fmt["worked_solutions"]`` (default false) does. A benchmark is shown with worked
    solutions only if every example and shot of it has a gold ``solution``:

    - set per benchmark: true for a benchmark whose rows lack solutions is an error naming
      it (the study asked for something the data cannot give);
    - set globally: benchmarks without any solution (MATH, logic) keep answer-only
      prompts, with a warning naming them; a benchmark with solutions on some rows only
      is an error (its prompts cannot share one format).
    """
    fmt = {**DEFAULT_FORMAT, **(fmt or {})}
    settings = benchmarks or {}
    chosen: set[str] = set()
    skipped: list[str] = []
    for benchmark in dict.fromkeys(examples["benchmark"]):
        own = (settings.get(benchmark) or {}).get("worked_solutions")
        if not bool(fmt.get("worked_solutions") if own is None else own):
            continue
        rows = pd.concat(
            [
                examples.loc[examples["benchmark"] == benchmark, ["id", "solution"]],
                shots.loc[shots["benchmark"] == benchmark, ["id", "solution"]],
            ]
        )
        has = rows["solution"].map(_has_solution)
        if has.all():
            chosen.add(str(benchmark))
        elif own is None and not has.any():
            skipped.append(str(benchmark))
        else:
            where = (
                "benchmarks." + str(benchmark) + ".worked_solutions"
                if own is not None
                else "prompt_format.worked_solutions"
            )
            raise ValueError(
                f"{where} is true but {int((~has).sum())} of {len(rows)} {benchmark} rows "
                f"(examples and shots, e.g. {rows.loc[~has, 'id'].iloc[0]}) have no worked "
                f"solution; worked solutions need the source's gold solution on every row "
                f"(GSM8K's text before '####'). Set benchmarks.{benchmark}.worked_solutions: false"
            )
    if skipped:
        log.warning(
            "prompt_format.worked_solutions: %s provide no worked solutions; their prompts "
            "stay answer-only",
            ", ".join(skipped),
        )
    return chosen


def build_prompts(
    examples: pd.DataFrame,
    shots: pd.DataFrame,
    fmt: Mapping[str, Any] | None = None,
    benchmarks: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """The prompts table (``PROMPT_COLUMNS``): one few-shot prompt per example.

    ``benchmarks``: the per-benchmark settings (``data_loading.benchmarks``), for their
    ``worked_solutions`` (see ``worked_solution_benchmarks``).
    """
    fmt = {**DEFAULT_FORMAT, **(fmt or {})}
    overlap = set(examples["id"]) & set(shots["id"])
    if overlap:
        raise ValueError(f"few-shot rows also appear as examples: {sorted(overlap)[:5]}")
    examples = examples.assign(
        **{c: None for c in ("template", "solution", "source") if c not in examples.columns}
    )
    shots = shots.assign(
        **{c: None for c in ("template", "solution", "source") if c not in shots.columns}
    )
    worked = worked_solution_benchmarks(examples, shots, fmt, benchmarks)
    shot_lists: dict[str, list[tuple[str, list[str], str]]] = {}
    for benchmark, group in shots.sort_values("shot").groupby("benchmark", sort=False):
        shot_lists[str(benchmark)] = [
            (q, _as_list(c), worked_answer(sol, a, fmt) if benchmark in worked else a)
            for q, c, a, sol in zip(
                group["question"], group["choices"], group["answer"], group["solution"], strict=True
            )
        ]
    records = []
    for row in examples.to_dict("records"):
        choices = _as_list(row["choices"]) if row["answer_type"] == "choice" else []
        generation_prompt = format_prompt(
            row["question"], choices, shot_lists.get(row["benchmark"], []), fmt
        )
        is_worked = row["benchmark"] in worked
        records.append(
            {
                "id": row["id"],
                "benchmark": row["benchmark"],
                "prompt": (
                    f"{generation_prompt} {row['solution']}\n{fmt['answer_marker']}"
                    if is_worked
                    else generation_prompt
                ),
                "target": f" {row['answer']}",
                "answer": row["answer"],
                "answer_type": row["answer_type"],
                "choices": choices,
                "choice_targets": [f" {c}" for c in choices],
                "chance": 1.0 / len(choices) if choices else 0.0,
                "split": row["split"],
                "template": _template_or_none(row["template"]),
                "prompt_format": "worked_solution" if is_worked else "answer_only",
                "generation_prompt": generation_prompt,
                "source": _template_or_none(row["source"]),
            }
        )
    return pd.DataFrame(records, columns=PROMPT_COLUMNS)


def _template_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def clusters(table: pd.DataFrame) -> pd.Series:
    """Each row's cluster for statistics (an opaque key): ``<benchmark>/<template>``, or its
    own ``id`` without a template (rows of one template are not independent problems;
    other rows are). Any table with ``id``, ``benchmark`` and ``template``: examples,
    prompts, baseline scores."""
    own = table["id"].astype(str)
    if "template" not in table.columns:
        return own.astype(object)
    template = table["template"].map(_template_or_none)
    keyed = table["benchmark"].astype(str) + "/" + template.fillna("").astype(str)
    return keyed.where(template.notna(), own).astype(object)
