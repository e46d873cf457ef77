"""``HFDatasetsDataset``: a Hugging Face ``datasets`` table loaded as a pandas DataFrame.

kedro-datasets' ``huggingface.HFDataset`` queries the hub on every load, and its
``huggingface.JSONDataset``/``ParquetDataset`` return ``datasets`` objects rather than a
DataFrame. This dataset calls ``datasets.load_dataset(path, name, split=...)`` and hands
back a DataFrame, so a benchmark's raw catalog entry can point at:

- a hub id, where the hub or a filled local cache is reachable
  (``HF_DATASETS_OFFLINE=1`` reads the cache only)::

      gsm8k_raw:
        type: sae_reasoning.datasets.hf_datasets.HFDatasetsDataset
        path: openai/gsm8k
        name: main
        split: test

- local files through the packaged builders (works offline)::

      gsm8k_raw:
        type: sae_reasoning.datasets.hf_datasets.HFDatasetsDataset
        path: json
        data_files: data/01_raw/gsm8k_test.jsonl
        split: train          # the packaged builders name a single file's split "train"
"""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd
from kedro.io.core import AbstractDataset, DatasetError

from sae_reasoning.benchmarks.sources import load_hf_dataframe


class HFDatasetsDataset(AbstractDataset[None, pd.DataFrame]):
    """Read-only: ``datasets.load_dataset`` -> pandas DataFrame.

    Args:
        path: hub id (``openai/gsm8k``) or packaged builder (``json``, ``parquet``, ``csv``).
        name: the dataset configuration (``main`` for GSM8K), if any.
        split: which split; required when the source has several.
        data_files: local file(s) for the packaged builders (a path, list or split mapping).
        columns: keep only these columns (e.g. the benchmark's native columns).
        load_args: further keyword arguments of ``datasets.load_dataset``
            (``revision``, ``cache_dir``, ...).
        metadata: ignored by Kedro, kept for plugins.
    """

    def __init__(
        self,
        *,
        path: str,
        name: str | None = None,
        split: str | None = None,
        data_files: Any = None,
        columns: list[str] | None = None,
        load_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._path = path
        self._name = name
        self._split = split
        self._data_files = copy.deepcopy(data_files)
        self._columns = list(columns) if columns is not None else None
        self._load_args = dict(load_args or {})
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        try:
            return load_hf_dataframe(
                self._path,
                self._name,
                split=self._split,
                data_files=copy.deepcopy(self._data_files),
                columns=self._columns,
                **self._load_args,
            )
        except ValueError as exc:
            raise DatasetError(f"HFDatasetsDataset({self._path!r}): {exc}") from exc

    def save(self, data: None) -> None:
        raise DatasetError(
            f"HFDatasetsDataset({self._path!r}) is read-only; save to a file dataset instead."
        )

    def describe(self) -> dict[str, Any]:
        return self._describe()

    def _describe(self) -> dict[str, Any]:
        return {
            "path": self._path,
            "name": self._name,
            "split": self._split,
            "data_files": self._data_files,
            "columns": self._columns,
            "load_args": self._load_args,
        }
