"""`CaptureStoreDataset`: the capture node's handle on a model's activation folders.

load() returns a `CaptureStore`; `prepare(job)` gives the node the local folder to capture
into: the path itself, or for an fsspec URL the staging folder, made to say what the job
may reuse before any model work (only the URL's manifests are fetched, no shard). The
node's completed manifests go to the activation dataset (ActivationStoreDataset), whose
save uploads and swaps in what changed. The same path and options as that entry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.activations.store import MANIFEST
from sae_reasoning.datasets.storage import Storage
from sae_reasoning.datasets.store_handle import StoreHandleDataset
from sae_reasoning.models.hooks import hook_point


class CaptureStore:
    """Where the capture node writes its shards (duck-typed by activations.capture)."""

    def __init__(self, storage: Storage):
        self._storage = storage

    @property
    def root(self) -> Path:
        return self._storage.local

    def prepare(self, job: CaptureJob) -> Path:
        """The folder to run `job` in; for a URL, staged from the URL's manifests."""
        s = self._storage
        if s.is_local:
            return self.root
        with s.errors("prepare the capture"):
            s.check_writable()
            s.recover()
            self._stage(job, s.cat_glob(f"*/*/{MANIFEST}"))
        return self.root

    def _stage(self, job: CaptureJob, remote: dict[str, bytes]) -> None:
        """Make each benchmark's staging folder say what the job may reuse: a complete local
        capture of this job (an earlier upload failed) is kept as is; else the folder holds
        just the remote manifests, so the job reuses what the URL has and captures the rest,
        without downloading any shard."""
        fingerprint, hooks = job.fingerprint(), [hook_point(layer) for layer in job.layers]
        for bench in job.names():
            folder = self.root / bench
            if all(_complete(folder / h, fingerprint) for h in hooks):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            for rel, raw in remote.items():
                if rel.split("/", 1)[0] == bench:
                    (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                    (self.root / rel).write_bytes(raw)


def _complete(folder: Path, fingerprint: str) -> bool:
    """A finished local capture of this job: manifest complete, every shard on disk."""
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        m.get("complete")
        and m.get("fingerprint") == fingerprint
        and all(
            (folder / e["file"]).is_file() and (folder / e["file"]).stat().st_size == e["bytes"]
            for e in m["shards"]
        )
    )


class CaptureStoreDataset(StoreHandleDataset):
    """load() gives the node a CaptureStore (same options as the entry it writes for)."""

    KIND = "activation store"

    def load(self) -> CaptureStore:
        return CaptureStore(self._storage)
