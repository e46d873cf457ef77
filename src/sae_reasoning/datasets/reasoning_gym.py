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

from sae_reasoning.benchmarks.parsing import BENCHMARKS
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
