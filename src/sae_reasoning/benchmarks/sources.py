"""Where raw benchmark rows come from, delivered in each benchmark's native columns.

- ``generate_native``: problems generated offline by ``reasoning-gym`` (deterministic in
  the seed), converted to the native columns of the benchmark they stand in for:
  GSM8K (``question``, ``answer`` ending in ``#### <number>``), MATH (``problem``,
  ``solution`` with ``\\boxed{...}``, ``level``, ``type``) and logic (``question``,
  ``answer``, ``choices``).
  Rows of tasks that instantiate templates (``gsm_symbolic``: GSM8K problems with new
  numbers and names) also carry a ``template`` column (``"gsm_symbolic:20"``): rows of
  one template are not independent problems. Procedurally generated tasks have none.
- ``load_hf_dataframe``: the Hugging Face ``datasets`` library (a hub id such as
  ``openai/gsm8k`` where a hub or local cache is reachable, or local json/parquet/csv
  files through its packaged builders), returned as a pandas DataFrame.
- ``as_dataframe``: accepts what other catalog datasets load (a DataFrame, or a
  ``datasets.Dataset``/``DatasetDict`` from kedro-datasets' ``huggingface.*`` datasets).
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from sae_reasoning.benchmarks.parsing import (
    BENCHMARKS,
    NATIVE_COLUMNS,
    format_number,
    parse_number,
)

# Keys of a task's entry in ``tasks`` that are ours; every other key goes to reasoning-gym.
RESERVED_TASK_KEYS = ("task", "weight", "choices", "math_type", "balance_answers")

# With balance_answers, rows are picked from this many times as many generated problems.
BALANCE_OVERSAMPLE = 4

# The closed answer sets of reasoning-gym tasks usable as multiple-choice logic problems.
LOGIC_CHOICES: dict[str, list[str]] = {
    "syllogism": ["Yes", "No"],
    "circuit_logic": ["0", "1"],
    "family_relationships": [
        "mother",
        "father",
        "sister",
        "brother",
        "daughter",
        "son",
        "wife",
        "husband",
        "grandmother",
        "grandfather",
        "aunt",
        "uncle",
        "niece",
        "nephew",
        "mother-in-law",
        "father-in-law",
    ],
}

# Trailing instructions reasoning-gym appends, which the benchmark's own rows do not have.
_INSTRUCTION_SUFFIXES = (
    r"\s*Give the result as your final answer\.\s*Do not include units\.\s*$",
    r"\s*Give only the [\w ()]+ as your final answer\.\s*$",
    r"\s*Only reply with the final value\.\s*$",
)


def _clamp_level(level: int) -> int:
    return max(1, min(5, int(level)))


def _digits(n: int) -> int:
    return len(str(abs(int(n))))


@dataclass(frozen=True)
class MathTask:
    """How a reasoning-gym task maps onto MATH: its subject and a 1-5 difficulty level."""

    type: str
    level: Callable[[dict[str, Any], str], int] | None = None  # (metadata, question) -> level


def _arith_level(meta: dict[str, Any], question: str) -> int:
    # 2 one-digit terms -> 1; each extra term or digit adds a level.
    return _clamp_level(meta.get("num_terms", 2) - 2 + meta.get("num_digits", 1))


def _equation_level(meta: dict[str, Any], question: str) -> int:
    # "z + 9 = 28" -> 1; more terms or longer coefficients on the left raise the level.
    equation = meta.get("equation", question)
    lhs = equation.split("=")[0]
    numbers = re.findall(r"\d+", equation)
    longest = max((len(n) for n in re.findall(r"\d+", lhs)), default=1)
    return _clamp_level(len(numbers) - 2 + longest)


def _numbers_level(meta: dict[str, Any], question: str) -> int:
    numbers = meta.get("numbers") or [int(n) for n in re.findall(r"\d+", question)]
    return _clamp_level(len(numbers) - 2 + max(_digits(n) for n in numbers))


MATH_TASKS: dict[str, MathTask] = {
    "basic_arithmetic": MathTask("Prealgebra", _arith_level),
    "chain_sum": MathTask("Prealgebra", _arith_level),
    "decimal_arithmetic": MathTask("Prealgebra"),
    "fraction_simplification": MathTask("Prealgebra"),
    "simple_equations": MathTask("Algebra", _equation_level),
    "polynomial_equations": MathTask("Algebra"),
    "gcd": MathTask("Number Theory", _numbers_level),
    "lcm": MathTask("Number Theory", _numbers_level),
    "count_primes": MathTask("Number Theory"),
    "prime_factorization": MathTask("Number Theory"),
    "coin_flip": MathTask("Counting & Probability"),
    "dice": MathTask("Counting & Probability"),
    "simple_geometry": MathTask("Geometry"),
    "advanced_geometry": MathTask("Geometry"),
    "polynomial_multiplication": MathTask("Intermediate Algebra"),
    "complex_arithmetic": MathTask("Intermediate Algebra"),
}


def _strip_instructions(question: str) -> str:
    for pattern in _INSTRUCTION_SUFFIXES:
        question = re.sub(pattern, "", question)
    return question.strip()


def _latex_answer(answer: str) -> str:
    """A generated final answer as MATH writes it inside \\boxed{}: ``3/4`` -> ``\\frac{3}{4}``."""
    m = re.fullmatch(r"\s*(-?)(\d+)\s*/\s*(\d+)\s*", answer)
    if m:
        return f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    return answer.strip()


def to_gsm8k_row(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A reasoning-gym entry as a GSM8K row; its answer must be a number."""
    value = parse_number(entry["answer"])
    if value is None:
        raise ValueError(
            f"reasoning-gym task {entry['metadata'].get('source_dataset')!r} gave a non-numeric "
            f"answer {entry['answer']!r}; GSM8K stand-ins need numeric answers"
        )
    number = format_number(value)
    cot = str(entry["metadata"].get("answer_cot") or "").strip()
    if "####" in cot:
        cot = cot.rsplit("####", 1)[0].rstrip()
    solution = f"{cot}\n#### {number}" if cot else f"#### {number}"
    return {"question": _strip_instructions(entry["question"]), "answer": solution}


def to_math_row(
    entry: Mapping[str, Any], task: str, math_type: str | None = None
) -> dict[str, Any]:
    """A reasoning-gym entry as a MATH row (level/type from ``MATH_TASKS``)."""
    info = MATH_TASKS.get(task, MathTask(math_type or task))
    question = _strip_instructions(entry["question"])
    level = info.level(entry["metadata"], question) if info.level else None
    answer = str(entry["answer"])
    cot = str(entry["metadata"].get("answer_cot") or "").strip()
    cot = cot.rsplit("####", 1)[0].rstrip() if cot else ""
    solution = (cot + "\n" if cot else "") + f"The answer is $\\boxed{{{_latex_answer(answer)}}}$."
    return {
        "problem": question,
        "solution": solution,
        "level": level,  # None: filled by rank in generate_native
        "type": math_type or info.type,
    }


def to_logic_row(entry: Mapping[str, Any], choices: list[str] | None) -> dict[str, Any]:
    """A reasoning-gym entry as a logic row; ``choices`` None for an open answer."""
    return {
        "question": entry["question"].strip(),
        "answer": str(entry["answer"]).strip(),
        "choices": list(choices) if choices else None,
    }


def entry_template(task: str, data: Any, entry: Mapping[str, Any]) -> str | None:
    """The template a reasoning-gym entry was instantiated from, as ``"<task>:<index>"``;
    None for tasks without templates.

    gsm_symbolic draws each entry from one of its GSM8K-derived generators; its entries'
    metadata does not name the generator, but the dataset's ``task_indices`` does (per
    ``metadata["source_index"]``). A ``template`` key in the metadata is used if present.
    """
    meta = entry.get("metadata") or {}
    for key in ("template", "template_id", "template_index"):
        if meta.get(key) is not None:
            return f"{task}:{meta[key]}"
    indices = getattr(data, "task_indices", None)
    index = meta.get("source_index")
    if task == "gsm_symbolic" and indices is not None and index is not None:
        return f"{task}:{int(indices[int(index)]):02d}"
    return None


def task_seed(seed: int, key: str) -> int:
    """A task's own seed: its rows stay the same when other tasks join or leave the mix."""
    return zlib.crc32(f"{seed}:{key}".encode()) % (2**31)


def normalize_tasks(tasks: Any) -> dict[str, dict[str, Any]]:
    """``tasks`` as ``{name: config}``; accepts a name, a list of names or a mapping."""
    if isinstance(tasks, str):
        tasks = {tasks: {}}
    elif isinstance(tasks, list | tuple):
        tasks = {t: {} for t in tasks}
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"tasks must name at least one reasoning-gym task, got {tasks!r}")
    return {str(name): dict(cfg or {}) for name, cfg in tasks.items()}


def split_sizes(size: int, weights: list[float]) -> list[int]:
    """``size`` rows shared out in proportion to ``weights`` (largest remainder)."""
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"task weights must be non-negative and not all zero, got {weights}")
    exact = [size * w / total for w in weights]
    sizes = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in order[: size - sum(sizes)]:
        sizes[i] += 1
    return sizes


def generate_native(benchmark: str, tasks: Any, size: int, seed: int) -> pd.DataFrame:
    """``size`` reasoning-gym problems in ``benchmark``'s native columns, fixed by ``seed``.

    ``tasks`` maps reasoning-gym task names to their config (keyword arguments of
    ``reasoning_gym.create_dataset``), plus these optional keys of ours:

    - ``task``: the reasoning-gym task, when the key is only a label (so one task can
      appear with several configs, e.g. at two difficulty levels);
    - ``weight``: the task's share of the rows (default 1);
    - ``balance_answers``: pick rows so that every answer occurs equally often;
    - ``choices``: logic only, the closed answer set (known for ``LOGIC_CHOICES`` tasks);
    - ``math_type``: MATH only, the ``type`` of a task missing from ``MATH_TASKS``.

    Each task draws from its own seed (derived from ``seed`` and its key), and the rows
    of all tasks are shuffled together with ``seed``. When some task instantiates
    templates (``entry_template``), the frame has an extra ``template`` column (null for
    the rows of the other tasks).
    """
    import reasoning_gym  # heavy import, kept local

    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    if int(size) < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    tasks = normalize_tasks(tasks)
    unknown = [
        cfg.get("task", t)
        for t, cfg in tasks.items()
        if cfg.get("task", t) not in reasoning_gym.factory.DATASETS
    ]
    if unknown:
        raise ValueError(f"unknown reasoning-gym task(s) {unknown}")
    weights = [float(cfg.get("weight", 1.0)) for cfg in tasks.values()]
    rows: list[dict[str, Any]] = []
    for (label, cfg), n in zip(tasks.items(), split_sizes(int(size), weights), strict=True):
        if n:
            rows.extend(_task_rows(benchmark, label, cfg, n, seed))
    random.Random(seed).shuffle(rows)
    return _native_frame(rows, benchmark)


def _task_rows(benchmark: str, label: str, cfg: dict, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` rows of one task (its own seed), in ``benchmark``'s native columns."""
    import reasoning_gym  # heavy import, kept local

    task = cfg.get("task", label)
    gym_cfg = {k: v for k, v in cfg.items() if k not in RESERVED_TASK_KEYS}
    balance = bool(cfg.get("balance_answers", False))
    n_gen = n * BALANCE_OVERSAMPLE if balance else n
    data = reasoning_gym.create_dataset(task, size=n_gen, seed=task_seed(seed, label), **gym_cfg)
    entries = balanced_entries(list(data), n) if balance else list(data)
    task_rows = []
    for entry in entries:
        if benchmark == "gsm8k":
            row = to_gsm8k_row(entry)
        elif benchmark == "math":
            row = to_math_row(entry, task, cfg.get("math_type"))
        else:
            row = to_logic_row(entry, cfg.get("choices", LOGIC_CHOICES.get(task)))
        row["template"] = entry_template(task, data, entry)
        row["source"] = f"reasoning-gym {task}"
        task_rows.append(row)
    if benchmark == "math":
        _fill_levels_by_rank(task_rows)
    return task_rows


def _native_frame(rows: list[dict[str, Any]], benchmark: str) -> pd.DataFrame:
    columns = list(NATIVE_COLUMNS[benchmark]) + (["choices"] if benchmark == "logic" else [])
    if any(r["template"] is not None for r in rows):
        columns.append("template")  # optional column: only where some task has templates
    columns.append("source")  # optional column: what generated each row (named in the report)
    frame = pd.DataFrame(rows, columns=columns)
    if benchmark == "math":
        frame["level"] = [f"Level {int(lv)}" for lv in frame["level"]]
    return frame


def balanced_entries(entries: list[Mapping[str, Any]], n: int) -> list[Mapping[str, Any]]:
    """``n`` entries with each answer equally often where possible (answers taken in turn,
    in generation order), so that the chance level 1/len(choices) is what guessing gets."""
    by_answer: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        by_answer.setdefault(str(entry["answer"]).strip(), []).append(i)
    queues = [list(reversed(q)) for q in by_answer.values()]
    picked: list[int] = []
    while len(picked) < min(n, len(entries)):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return [entries[i] for i in sorted(picked)]


def _fill_levels_by_rank(rows: list[dict[str, Any]]) -> None:
    """Tasks without a level rule: levels 1-5 by quintile of problem length."""
    missing = [r for r in rows if r["level"] is None]
    order = sorted(range(len(missing)), key=lambda i: len(missing[i]["problem"]))
    for rank, i in enumerate(order):
        missing[i]["level"] = 1 + (5 * rank) // max(1, len(missing))


# --------------------------------------------------------------------------- HF / others


def as_dataframe(data: Any, split: str | None = None, name: str = "raw data") -> pd.DataFrame:
    """A pandas DataFrame from what a catalog entry loaded.

    Passes DataFrames through; converts a ``datasets.Dataset``; picks ``split`` (or the
    only split) of a ``datasets.DatasetDict``.
    """
    if isinstance(data, pd.DataFrame):
        return data
    if hasattr(data, "keys") and hasattr(data, "values") and not hasattr(data, "to_pandas"):
        splits = list(data.keys())
        if split is None:
            if len(splits) != 1:
                raise ValueError(
                    f"{name}: loaded {len(splits)} splits {splits}; choose one "
                    "(e.g. `split: test` in the dataset's load_args)"
                )
            split = splits[0]
        if split not in splits:
            raise ValueError(f"{name}: no split {split!r}; available: {splits}")
        data = data[split]
    if hasattr(data, "to_pandas"):
        frame = data.to_pandas()
        if isinstance(frame, pd.DataFrame):
            return frame
        return pd.concat(list(frame), ignore_index=True)  # batched=True form
    raise ValueError(
        f"{name}: expected a pandas DataFrame or a Hugging Face dataset, got {type(data).__name__}"
    )


def load_hf_dataframe(
    path: str,
    name: str | None = None,
    split: str | None = None,
    data_files: Any = None,
    columns: list[str] | None = None,
    **load_args: Any,
) -> pd.DataFrame:
    """``datasets.load_dataset(path, name, split=..., data_files=...)`` as a DataFrame.

    ``path`` is a hub id (``"openai/gsm8k"`` with ``name="main"``, ``split="test"``),
    which needs the hub or a filled local cache (``HF_DATASETS_OFFLINE=1`` uses the
    cache only), or a packaged builder for local files (``"json"``, ``"parquet"``,
    ``"csv"`` with ``data_files``).
    """
    import datasets  # heavy import, kept local

    loaded = datasets.load_dataset(path, name, split=split, data_files=data_files, **load_args)
    frame = as_dataframe(loaded, split=None, name=f"load_dataset({path!r})")
    if columns is not None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(
                f"load_dataset({path!r}): no column(s) {missing}; found {list(frame.columns)}"
            )
        frame = frame[list(columns)]
    return frame
