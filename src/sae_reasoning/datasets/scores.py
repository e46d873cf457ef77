"""`ScoresDataset`: a parquet table of per-example scores that remembers what made it.

The score_baseline node asks its `baseline_scores_store` handle (ScoresStoreDataset)
whether the file already carries the job's fingerprint (in the parquet schema metadata):
then it returns a `StoredScores` and nothing is written; else it scores and returns the
table with the fingerprint (`FingerprintedScores`), which save() writes with it.
save(DataFrame) writes as is. Files are written to a temporary name and renamed, so a
failed run keeps the last table. load() -> pandas DataFrame.

`filepath` may be an fsspec URL (s3://..., gcs://..., with `credentials` / `fs_args` as in
kedro-datasets): the fingerprint is read from the remote file's footer, and a new table is
written beside it and moved into place (storage.py `publish`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import AbstractDataset, DatasetError

from sae_reasoning.atomic import atomic_path
from sae_reasoning.datasets.previews import TablePreview, table_preview
from sae_reasoning.datasets.storage import Storage, StorageBacked

log = logging.getLogger(__name__)
FINGERPRINT_KEY = b"sae_reasoning.fingerprint"


@dataclass(frozen=True)
class FingerprintedScores:
    """A scores table and the fingerprint of the job that made it (stored with it)."""

    table: pd.DataFrame
    fingerprint: str


@dataclass(frozen=True)
class StoredScores:
    """The stored table was made by this fingerprint: nothing to write."""

    where: str
    fingerprint: str


class ScoresDataset(StorageBacked, AbstractDataset[Any, pd.DataFrame]):
    def __init__(
        self,
        *,
        filepath: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self._init_storage("scores table", filepath, credentials, fs_args, metadata=metadata)
        self._url = self._storage.url
        if not self._storage.is_local:  # publish() works relative to the file's folder
            parent, _, self._name = self._url.rstrip("/").rpartition("/")
            self._storage = Storage(
                parent, credentials=credentials, fs_args=fs_args, kind="scores table"
            )

    @property
    def _path(self) -> Path | str:
        """The file: the local path, or its path on the remote storage (not staged)."""
        s = self._storage
        return s.local if s.is_local else s.remote(self._name)

    def _open(self):
        return self._storage.fs.open(self._path, "rb", **self._storage.open_args_load)

    def fingerprint(self) -> str | None:
        if not self._storage.is_local:
            with self._storage.errors("read the stored fingerprint"):
                if not self._storage.exists(self._name):
                    return None
                with self._open() as f:
                    meta = pq.read_schema(f).metadata or {}
            value = meta.get(FINGERPRINT_KEY)
            return value.decode() if value else None
        if not self._path.exists():
            return None
        meta = pq.read_schema(self._path).metadata or {}
        value = meta.get(FINGERPRINT_KEY)
        return value.decode() if value else None

    def load(self) -> pd.DataFrame:
        if not self._storage.is_local:
            with self._storage.errors("load"), self._open() as f:
                return pd.read_parquet(f)
        return pd.read_parquet(self._path)

    def store(self) -> ScoresStore:
        """The handle the score_baseline node checks (what `<model>.baseline_scores_store`
        loads)."""
        return ScoresStore(self)

    def _prepare(self) -> None:
        """Fail before any scoring when the URL cannot take the file; finish a cut publish."""
        if not self._storage.is_local:
            with self._storage.errors("prepare saving"):
                self._storage.check_writable()
                self._storage.recover(only=self._name)

    def save(self, data: FingerprintedScores | StoredScores | pd.DataFrame) -> None:
        if isinstance(data, StoredScores):
            return
        self._prepare()
        fingerprint = None
        if isinstance(data, FingerprintedScores):
            data, fingerprint = data.table, data.fingerprint
        if not isinstance(data, pd.DataFrame):
            raise DatasetError(f"{self._path}: expected a scores table, got {type(data).__name__}")
        table = pa.Table.from_pandas(data, preserve_index=False)
        if fingerprint:
            table = table.replace_schema_metadata(
                {**(table.schema.metadata or {}), FINGERPRINT_KEY: fingerprint}
            )
        if not self._storage.is_local:
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            with self._storage.errors("write"):
                self._storage.publish_bytes(sink.getvalue().to_pybytes(), self._name)
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._path) as tmp:
            pq.write_table(table, tmp)

    def _exists(self) -> bool:
        if not self._storage.is_local:
            with self._storage.errors("check"):
                return self._storage.exists(self._name)
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path) if self._storage.is_local else self._url}

    def preview(self, nrows: int = 5) -> TablePreview:
        """kedro-viz: the first `nrows` scores."""
        return table_preview(self.load().head(nrows))


class ScoresStore:
    """What the score_baseline node checks before it scores: the stored table's fingerprint."""

    def __init__(self, dataset: ScoresDataset):
        self._ds = dataset
        dataset._prepare()

    def stored(self, fingerprint: str, model: str) -> StoredScores | None:
        """A StoredScores when the stored table was made by this fingerprint."""
        if self._ds.fingerprint() != fingerprint:
            return None
        log.info(
            "baseline %s: reusing %s (fingerprint %s matches)", model, self._ds._path, fingerprint
        )
        return StoredScores(str(self._ds._path), fingerprint)


class ScoresStoreDataset(AbstractDataset[None, ScoresStore]):
    """A handle, not data: load() gives the score_baseline node a ScoresStore."""

    def __init__(
        self,
        *,
        filepath: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        """Args: as the scores entry (ScoresDataset) of the same model."""
        self._target = ScoresDataset(filepath=filepath, credentials=credentials, fs_args=fs_args)
        self._path, self._protocol = (
            self._target._path,
            self._target._protocol,
        )  # the runner's location check
        self.metadata = metadata

    def load(self) -> ScoresStore:
        return self._target.store()

    def save(self, data: Any) -> None:
        raise DatasetError(f"{self._target._url}: a scores store handle is an input only")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._target._url}
