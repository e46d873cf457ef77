"""``ReasoningGymDataset``: benchmark rows generated offline by reasoning-gym.

A read-only Kedro dataset that stands in for a benchmark: it generates ``size`` problems
from one or more reasoning-gym tasks, deterministically from ``seed``, and loads them as
a pandas DataFrame in the native columns of ``benchmark`` (see
``sae_reasoning.benchmarks.sources.generate_native``), plus an optional ``template``
column where a task instantiates templates (``gsm_symbolic``: ``"gsm_symbolic:20"``;
rows of one template are not independent problems).

Example (``conf/base/catalog_data_loading.yml``)::

    math_raw:
      type: sae_reasoning.datasets.reasoning_gym.ReasoningGymDataset
      benchmark: math
      size: 140
      seed: 1
      tasks:
        basic_arithmetic: {min_terms: 2, max_terms: 2, max_digits: 2, operators: ["+", "-"]}
        gcd: {max_value: 50, weight: 0.5}
"""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd
from kedro.io.core import AbstractDataset, DatasetError

from sae_reasoning.benchmarks.parsing import ANSWER_MARKER, BENCHMARKS, normalize_raw
from sae_reasoning.benchmarks.sources import generate_native, normalize_tasks


class ReasoningGymDataset(AbstractDataset[None, pd.DataFrame]):
    """Generated benchmark rows in the benchmark's native columns (read-only).

    Args:
        benchmark: which benchmark the rows stand in for: ``gsm8k``, ``math`` or ``logic``.
        tasks: reasoning-gym task name(s): a name, a list, or a mapping of name to the
            task's config (keyword arguments of ``reasoning_gym.create_dataset``) plus the
            optional keys ``weight`` (share of rows), ``choices`` (logic) and ``math_type``.
        size: number of rows to generate.
        seed: generation seed; the same seed gives the same rows.
        metadata: ignored by Kedro, kept for plugins (e.g. kedro-viz).
    """

    def __init__(
        self,
        *,
        benchmark: str,
        tasks: Any,
        size: int,
        seed: int = 0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if benchmark not in BENCHMARKS:
            raise DatasetError(
                f"ReasoningGymDataset: unknown benchmark {benchmark!r}; "
                f"expected one of {BENCHMARKS}"
            )
        try:
            self._tasks = normalize_tasks(tasks)
        except ValueError as exc:
            raise DatasetError(f"ReasoningGymDataset: {exc}") from exc
        if int(size) < 0:
            raise DatasetError(f"ReasoningGymDataset: size must be >= 0, got {size}")
        self._benchmark = benchmark
        self._size = int(size)
        self._seed = int(seed)
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        return generate_native(self._benchmark, copy.deepcopy(self._tasks), self._size, self._seed)

    def save(self, data: None) -> None:
        raise DatasetError(
            f"ReasoningGymDataset ({self._benchmark}) is read-only: it generates its rows "
            "from reasoning-gym; point the catalog entry at a file dataset to store rows."
        )

    def describe(self) -> dict[str, Any]:
        """The dataset's configuration: benchmark, tasks, size, seed."""
        return self._describe()

    def _describe(self) -> dict[str, Any]:
        return {
            "benchmark": self._benchmark,
            "tasks": copy.deepcopy(self._tasks),
            "size": self._size,
            "seed": self._seed,
        }

    def _exists(self) -> bool:
        return True


class ReasoningGymCorpusDataset(AbstractDataset[None, pd.DataFrame]):
    """The default SAE training corpus (`sae_corpus`): reasoning-gym problems with their
    worked solutions, generated offline like the benchmarks but from another seed.

    Loads columns ``benchmark``, ``question``, ``answer`` (the worked solution and its
    ``#### <answer>`` line where the task has one, as gsm_symbolic; else the answer) and
    ``source``; the capture writes each row in the prompt format ("Question: ...\nAnswer:
    ..."). Rows of all benchmarks are shuffled together (deterministic in ``seed``), so a
    token budget that stops part-way still takes every benchmark.

    Args:
        benchmarks: ``{benchmark: {tasks: ..., size: n}}``, ``tasks`` as in
            ReasoningGymDataset (the catalog shares them with `<benchmark>_raw` by YAML anchor).
        seed: generation seed; keep it different from the benchmarks' so that few rows
            repeat an evaluation question (those the capture drops are counted and logged).
    """

    def __init__(
        self,
        *,
        benchmarks: dict[str, dict[str, Any]],
        seed: int = 0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(benchmarks, dict) or not benchmarks:
            raise DatasetError(
                "ReasoningGymCorpusDataset: `benchmarks` must map a benchmark to "
                "{tasks: ..., size: n}"
            )
        self._benchmarks = {}
        for name, cfg in benchmarks.items():
            if name not in BENCHMARKS:
                raise DatasetError(
                    f"ReasoningGymCorpusDataset: unknown benchmark {name!r}; "
                    f"expected one of {BENCHMARKS}"
                )
            cfg = dict(cfg or {})
            if set(cfg) - {"tasks", "size"} or "tasks" not in cfg or int(cfg.get("size", -1)) < 0:
                raise DatasetError(
                    f"ReasoningGymCorpusDataset: benchmark {name!r} needs `tasks` and a "
                    f"`size` >= 0 (and nothing else), got {sorted(cfg)}"
                )
            try:
                self._benchmarks[name] = {
                    "tasks": normalize_tasks(cfg["tasks"]),
                    "size": int(cfg["size"]),
                }
            except ValueError as exc:
                raise DatasetError(f"ReasoningGymCorpusDataset ({name}): {exc}") from exc
        self._seed = int(seed)
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        frames = []
        for name, cfg in self._benchmarks.items():
            if cfg["size"] == 0:
                continue
            raw = generate_native(name, copy.deepcopy(cfg["tasks"]), cfg["size"], self._seed)
            rows = normalize_raw(raw, name, name=f"sae_corpus ({name})")
            worked = rows["solution"].notna()
            answer = rows["answer"].astype(str)
            answer[worked] = rows["solution"][worked] + f"\n{ANSWER_MARKER} " + answer[worked]
            frames.append(
                pd.DataFrame(
                    {
                        "benchmark": name,
                        "question": rows["question"],
                        "answer": answer,
                        "source": rows["source"],
                    }
                )
            )
        if not frames:
            raise DatasetError("ReasoningGymCorpusDataset: every benchmark has size 0")
        corpus = pd.concat(frames, ignore_index=True)
        return corpus.sample(frac=1.0, random_state=self._seed).reset_index(drop=True)

    def save(self, data: None) -> None:
        raise DatasetError(
            "ReasoningGymCorpusDataset is read-only: it generates its rows from "
            "reasoning-gym; point `sae_corpus` at a file dataset to store rows."
        )

    def _describe(self) -> dict[str, Any]:
        return {"benchmarks": copy.deepcopy(self._benchmarks), "seed": self._seed}

    def _exists(self) -> bool:
        return True
