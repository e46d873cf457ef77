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

- with ``streaming: true``, a source too large to hold (an SAE training corpus of 10^8
  tokens): ``load()`` then returns ``StreamedRows``, an iterable of dict rows read
  lazily (its reader stops where the consumer stops, e.g. at a token budget)::

      sae_corpus:
        type: sae_reasoning.datasets.hf_datasets.HFDatasetsDataset
        path: monology/pile-uncopyrighted
        split: train
        streaming: true
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from typing import Any

import pandas as pd
from kedro.io.core import AbstractDataset, DatasetError

from sae_reasoning.benchmarks.sources import load_hf_dataframe


class StreamedRows:
    """Rows of a streamed ``datasets`` source, read lazily each time it is iterated.

    ``identity`` (the source's arguments, and size and mtime of local data files) is what
    a capture fingerprints in place of the content, which is never read just to compare."""

    def __init__(
        self,
        path: str,
        name: str | None,
        split: str,
        data_files: Any,
        columns: list[str] | None,
        load_args: dict[str, Any],
    ):
        self._args = (path, name, split, data_files, columns, load_args)
        self.identity = {
            "path": path,
            "name": name,
            "split": split,
            "data_files": data_files,
            "columns": columns,
            "load_args": load_args,
            "files": [_file_stamp(f) for f in _local_files(data_files)],
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import datasets  # heavy import, kept local

        path, name, split, data_files, columns, load_args = self._args
        stream = datasets.load_dataset(
            path,
            name,
            split=split,
            data_files=copy.deepcopy(data_files),
            streaming=True,
            **load_args,
        )
        if columns is not None:
            missing = [c for c in columns if c not in (stream.column_names or columns)]
            if missing:
                raise DatasetError(
                    f"HFDatasetsDataset({path!r}): no column(s) {missing}; "
                    f"found {stream.column_names}"
                )
            stream = stream.select_columns(columns)
        yield from stream

    def __repr__(self) -> str:
        return f"StreamedRows({self.identity['path']!r}, split={self.identity['split']!r})"


def _local_files(data_files: Any) -> list[str]:
    if isinstance(data_files, str):
        return [data_files] if os.path.exists(data_files) else []
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in _local_files(v)]
    if isinstance(data_files, (list, tuple)):
        return [f for v in data_files for f in _local_files(v)]
    return []


def _file_stamp(path: str) -> list:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


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
        streaming: read lazily (``load()`` returns ``StreamedRows``, not a DataFrame);
            needs ``split``.
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
        streaming: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if streaming and split is None:
            raise DatasetError(
                f"HFDatasetsDataset({path!r}): streaming needs a `split` "
                '(a single local file\'s split is called "train")'
            )
        self._streaming = bool(streaming)
        self._path = path
        self._name = name
        self._split = split
        self._data_files = copy.deepcopy(data_files)
        self._columns = list(columns) if columns is not None else None
        self._load_args = dict(load_args or {})
        self.metadata = metadata

    def load(self) -> pd.DataFrame | StreamedRows:
        if self._streaming:
            return StreamedRows(
                self._path,
                self._name,
                self._split,
                copy.deepcopy(self._data_files),
                self._columns,
                dict(self._load_args),
            )
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
            "streaming": self._streaming,
        }
