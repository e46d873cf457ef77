"""`ScoresDataset`: a parquet table of per-example scores that remembers what made it.

save(BaselineJob) runs the job unless the file on disk carries the job's fingerprint (in
the parquet schema metadata), in which case it is reused; save(DataFrame) writes as is.
Files are written to a temporary name and renamed, so a failed run keeps the last table.
load() -> pandas DataFrame.

`filepath` may be an fsspec URL (s3://..., gcs://..., with `credentials` / `fs_args` as in
kedro-datasets): the fingerprint is read from the remote file's footer, and a new table is
written beside it and moved into place (storage.py `publish`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import AbstractDataset, DatasetError

from sae_reasoning.baseline import BaselineJob
from sae_reasoning.datasets.previews import TablePreview, table_preview
from sae_reasoning.datasets.storage import Storage

log = logging.getLogger(__name__)
FINGERPRINT_KEY = b"sae_reasoning.fingerprint"


class ScoresDataset(AbstractDataset[Any, pd.DataFrame]):
    def __init__(self, *, filepath: str, credentials: dict[str, Any] | None = None,
                 fs_args: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None):
        self._storage = Storage(filepath, credentials=credentials, fs_args=fs_args, kind="scores table")
        self._url = self._storage.url
        self._protocol = self._storage.protocol
        if not self._storage.is_local:  # publish() works relative to the file's folder
            parent, _, self._name = self._storage.url.rstrip("/").rpartition("/")
            self._storage = Storage(parent, credentials=credentials, fs_args=fs_args, kind="scores table")
        self._path = self._storage.local if self._storage.is_local else self._storage.remote(self._name)
        self.metadata = metadata

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

    def save(self, data: Any) -> None:
        fingerprint = None
        if not self._storage.is_local:
            with self._storage.errors("prepare saving"):
                self._storage.check_writable()
                self._storage.recover(only=self._name)
        if isinstance(data, BaselineJob):
            fingerprint = data.fingerprint()
            if self.fingerprint() == fingerprint:
                log.info("baseline %s: reusing %s (fingerprint %s matches)", data.model.name, self._path, fingerprint)
                return
            data = data.run()
        if not isinstance(data, pd.DataFrame):
            raise DatasetError(f"{self._path}: expected a BaselineJob or a DataFrame, got {type(data).__name__}")
        table = pa.Table.from_pandas(data, preserve_index=False)
        if fingerprint:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), FINGERPRINT_KEY: fingerprint})
        if not self._storage.is_local:
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            with self._storage.errors("write"):
                self._storage.publish_bytes(sink.getvalue().to_pybytes(), self._name)
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self._path)

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
