"""`ScoresDataset`: a parquet table of per-example scores that remembers what made it.

save(BaselineJob) runs the job unless the file on disk carries the job's fingerprint (in
the parquet schema metadata), in which case it is reused; save(DataFrame) writes as is.
Files are written to a temporary name and renamed, so a failed run keeps the last table.
load() -> pandas DataFrame.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import AbstractDataset, DatasetError

from sae_reasoning.baseline import BaselineJob

log = logging.getLogger(__name__)
FINGERPRINT_KEY = b"sae_reasoning.fingerprint"


class ScoresDataset(AbstractDataset[Any, pd.DataFrame]):
    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None):
        self._path = Path(filepath)
        self.metadata = metadata

    def fingerprint(self) -> str | None:
        if not self._path.exists():
            return None
        meta = pq.read_schema(self._path).metadata or {}
        value = meta.get(FINGERPRINT_KEY)
        return value.decode() if value else None

    def load(self) -> pd.DataFrame:
        return pd.read_parquet(self._path)

    def save(self, data: Any) -> None:
        fingerprint = None
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
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self._path)

    def _exists(self) -> bool:
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path)}
