"""`ActivationStoreDataset`: one model's activation shard folders.

save() takes a lazy `CaptureJob` and runs it into the folder (streaming, atomic per
benchmark, reusing folders whose fingerprint matches); load() opens an `ActivationSet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.activations.store import MANIFEST, ActivationSet


class ActivationStoreDataset(AbstractDataset[CaptureJob, ActivationSet]):
    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> ActivationSet:
        return ActivationSet.open(self._path)

    def save(self, data: CaptureJob) -> None:
        if not isinstance(data, CaptureJob):
            raise DatasetError(f"{self._path}: expected a CaptureJob, got {type(data).__name__}")
        data.run(self._path)

    def _exists(self) -> bool:
        return any(self._path.glob(f"*/*/{MANIFEST}"))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
