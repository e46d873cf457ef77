"""`ResourceLedgerDataset`: the resource ledger's records as a table (read only).

The records are written by `hooks.ResourceLedgerHook` while nodes run, never by a node,
so `save` refuses. load() -> pandas DataFrame, one row per node and run (ledger.py has
the fields), oldest first; an empty table (with those columns) before any run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError

from sae_reasoning.datasets.previews import TablePreview, table_preview
from sae_reasoning.ledger import METER_FIELDS, TOKEN_KINDS, read_records

COLUMNS = [
    *("run_id", "node", "namespace", "stage", "status", "error", "started_at", "finished_at"),
    *METER_FIELDS,
    "tokens",
    *(f"{k}_tokens" for k in TOKEN_KINDS),
    "host",
    "pid",
]


class ResourceLedgerDataset(AbstractDataset[None, pd.DataFrame]):
    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None):
        self.path = Path(path)
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        records = read_records(self.path)
        return pd.DataFrame(
            records, columns=list(dict.fromkeys(COLUMNS + [k for r in records for k in r]))
        )

    def save(self, data: None) -> None:
        raise DatasetError(
            f"resource ledger {self.path}: written by ResourceLedgerHook while nodes "
            "run (settings.py), not by a node"
        )

    def _exists(self) -> bool:
        return self.path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def preview(self, nrows: int = 20) -> TablePreview:
        """kedro-viz: the latest `nrows` records, their main columns."""
        cols = [
            "finished_at",
            "node",
            "status",
            "wall_s",
            "device",
            "peak_memory_bytes",
            "peak_rss_bytes",
            "tokens",
        ]
        return table_preview(self.load().tail(nrows)[cols])
