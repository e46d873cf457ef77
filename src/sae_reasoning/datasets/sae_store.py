"""`SAEStoreDataset`: the sae_training node's handle on a model's SAE folders.

load() returns an `SAEStore`: the local folder the node trains in (the path itself, or the
staging folder of an fsspec URL, where checkpoints stay for resume), and, for a URL, the
finished SAEs the URL already holds, so the node reuses them without training or
downloading anything. The node's result goes to the `sae` dataset (SAEDataset), whose
save writes and publishes each SAE folder. The same path and options as that entry.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kedro.io import DatasetError

from sae_reasoning.datasets.storage import Storage
from sae_reasoning.datasets.store_handle import StoreHandleDataset
from sae_reasoning.sae.sae_folder import SUMMARY_FILENAME, StoredSAE
from sae_reasoning.sae.saelens_format import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME

logger = logging.getLogger(__name__)


def remote_is_sae(storage: Storage, hook: str) -> bool:
    return {SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME} <= set(storage.list_files(hook))


def remote_summary(storage: Storage, hook: str) -> dict | None:
    raw = storage.cat(f"{hook}/{SUMMARY_FILENAME}")
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None


def sae_folder(root: Path, hook_point: str) -> Path:
    if not hook_point or "/" in hook_point or hook_point.startswith("."):
        raise DatasetError(f"SAEDataset: {hook_point!r} cannot name an SAE folder")
    return root / hook_point


class SAEStore:
    """Where the sae_training node makes its SAEs (duck-typed by `sae.training_job`)."""

    def __init__(self, storage: Storage):
        self._storage = storage
        if not storage.is_local:
            with storage.errors("prepare saving SAEs"):
                storage.check_writable()
                storage.recover()
        storage.local.mkdir(parents=True, exist_ok=True)

    def folder(self, hook_point: str) -> Path:
        """The local folder of one hook point's SAE and its checkpoints."""
        return sae_folder(self._storage.local, hook_point)

    def stored(self, hook_point: str, fingerprint: str) -> StoredSAE | None:
        """The finished SAE of this fingerprint at the URL, if there is one (None for a
        local path: the job decides from the folder itself)."""
        s = self._storage
        if s.is_local:
            return None
        with s.errors("read the stored SAE"):
            summary = remote_summary(s, hook_point) or {}
            found = (
                summary.get("fingerprint") == fingerprint
                and summary.get("finished", False)
                and remote_is_sae(s, hook_point)
            )
        if not found:
            return None
        logger.info("reusing SAE %s (fingerprint match %s)", s.display(hook_point), fingerprint)
        return StoredSAE(s.display(hook_point), fingerprint)


class SAEStoreDataset(StoreHandleDataset):
    """load() gives the node a SAEStore (same options as the entry it writes for)."""

    KIND = "SAE folder"

    def load(self) -> SAEStore:
        return SAEStore(self._storage)
