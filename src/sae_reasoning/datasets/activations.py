"""`ActivationStoreDataset`: one model's activation shard folders.

The capture node runs its job in the folder the `activation_store` handle gives it
(capture_store.py: streaming, atomic per benchmark, reusing folders whose fingerprint
matches) and returns the completed manifests; save(manifests) checks them and, for a URL,
publishes them; load() opens an `ActivationSet`.

`path` may be an fsspec URL (s3://bucket/acts/{model}, gcs://..., with `credentials` and
`fs_args` as in kedro-datasets). The capture then runs in a local staging folder
(`local_cache`, default data/.staging/<name>-<hash of the URL>): before it, only the
remote manifests are fetched (they decide reuse); save() uploads each benchmark whose
manifests differ from the URL's and swaps it in (storage.py `publish`); an interrupted
capture resumes from the staging folder. load() downloads the shards whose sha256 the
local copy lacks.

Shards are checked against their manifest digest before their first read in the process
(store.py); `verify: false` in the catalog entry turns that off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from sae_reasoning.activations.store import MANIFEST, ActivationSet, ActivationStore
from sae_reasoning.atomic import atomic_write_bytes
from sae_reasoning.datasets.capture_store import CaptureStore
from sae_reasoning.datasets.previews import TablePreview, records_preview
from sae_reasoning.datasets.storage import StorageBacked

Manifests = dict[str, dict[str, dict]]  # {benchmark: {hook point: manifest}}


class ActivationStoreDataset(StorageBacked, AbstractDataset[Manifests, ActivationSet]):
    def __init__(
        self,
        *,
        path: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        local_cache: str | None = None,
        verify: bool = True,
        metadata: dict[str, Any] | None = None,
    ):
        """
        Args:
            path: folder of this model's activations: a local path or an fsspec URL.
            credentials, fs_args: passed to the fsspec filesystem (as in kedro-datasets).
            local_cache: staging folder for a remote `path` (ignored for local paths).
            verify: check each shard against its manifest digest before its first read.
            metadata: free-form (shown by kedro-viz).
        """
        self._init_storage("activation store", path, credentials, fs_args, local_cache, metadata)
        self._verify = verify

    def load(self) -> ActivationSet:
        if self._storage.is_local:
            return ActivationSet.open(self._path, verify=self._verify)
        s = self._storage
        with s.errors("load activations"):
            s.recover()
            manifests = s.cat_glob(f"*/*/{MANIFEST}")
            if not manifests:
                raise DatasetError(f"no activation folders under {s.url}")
            for rel, raw in manifests.items():
                folder = rel.rsplit("/", 1)[0]
                m = json.loads(raw)
                names = [e["file"] for e in m["shards"]]
                s.fetch(
                    folder,
                    self._path / folder,
                    names,
                    sha256={e["file"]: e["sha256"] for e in m["shards"]},
                )
                _write_if_changed(self._path / rel, raw)
                for f in (self._path / folder).iterdir():  # shards of an earlier, different capture
                    if (
                        f.is_file()
                        and not f.name.startswith(".")
                        and f.name not in {*names, MANIFEST}
                    ):
                        f.unlink()
        stores: dict[str, dict[str, ActivationStore]] = {}
        for rel in sorted(manifests):
            store = ActivationStore((self._path / rel).parent, verify=self._verify)
            stores.setdefault(rel.split("/", 1)[0], {})[store.hook_point] = store
        return ActivationSet(self._path, stores)

    def store(self) -> CaptureStore:
        """The handle the capture node writes into (what `<model>.activation_store` loads)."""
        return CaptureStore(self._storage)

    def save(self, data: Manifests) -> None:
        """Check the capture's completed manifests against the folder; for a URL, upload
        each benchmark whose manifests differ from the URL's and swap it in."""
        if not isinstance(data, dict):
            raise DatasetError(
                f"{self._storage.url}: expected the capture's manifests, got {type(data).__name__}"
            )
        for bench, by_hook in data.items():
            for hook, m in by_hook.items():
                path = self._path / bench / hook / MANIFEST
                on_disk = json.loads(path.read_text()) if path.is_file() else {}
                if not m.get("complete") or on_disk.get("fingerprint") != m.get("fingerprint"):
                    raise DatasetError(f"{path}: not the completed capture the node returned")
        if self._storage.is_local:
            return
        s = self._storage
        with s.errors("read the stored manifests"):
            remote = s.cat_glob(f"*/*/{MANIFEST}")
        for bench in sorted(data):
            local = {
                f"{bench}/{h}/{MANIFEST}": (self._path / bench / h / MANIFEST).read_bytes()
                for h in data[bench]
            }
            if local != {rel: remote.get(rel) for rel in local}:
                s.publish(self._path / bench, bench)
                for h in data[bench]:  # the shards just uploaded need no hashing on the next load()
                    shards = data[bench][h]["shards"]
                    s.remember(self._path / bench / h, {e["file"]: e["sha256"] for e in shards})

    def _exists(self) -> bool:
        if self._storage.is_local:
            return any(self._path.glob(f"*/*/{MANIFEST}"))
        with self._storage.errors("list activations"):
            return bool(self._storage.glob(f"*/*/{MANIFEST}"))

    def _describe(self) -> dict[str, Any]:
        return {"path": self._location()}

    def preview(self) -> TablePreview:
        """kedro-viz: one row per benchmark and hook point, from the manifests alone."""
        if self._storage.is_local:
            raw = {
                str(p.relative_to(self._path)): p.read_bytes()
                for p in sorted(self._path.glob(f"*/*/{MANIFEST}"))
            }
        else:
            with self._storage.errors("preview activations"):
                raw = self._storage.cat_glob(f"*/*/{MANIFEST}")
        rows = []
        for rel in sorted(raw):
            m = json.loads(raw[rel])
            rows.append(
                {
                    "benchmark": rel.split("/", 1)[0],
                    "hook point": m.get("hook_point"),
                    "n_tokens": m.get("n_tokens"),
                    "d_model": m.get("d_model"),
                    "dtype": m.get("dtype"),
                    "shards": len(m.get("shards", [])),
                    "complete": m.get("complete"),
                    "median norm": (m.get("norm_stats") or {}).get("median"),
                }
            )
        return records_preview(rows)


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
