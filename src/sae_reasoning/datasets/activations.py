"""`ActivationStoreDataset`: one model's activation shard folders.

save() takes a lazy `CaptureJob` and runs it into the folder (streaming, atomic per
benchmark, reusing folders whose fingerprint matches); load() opens an `ActivationSet`.

`path` may be an fsspec URL (s3://bucket/acts/{model}, gcs://..., with `credentials` and
`fs_args` as in kedro-datasets). The capture then runs in a local staging folder
(`local_cache`, default data/.staging/<name>-<hash of the URL>): before it, only the
remote manifests are fetched (they decide reuse); after it, each benchmark captured is
uploaded and swapped in (storage.py `publish`); an interrupted capture resumes from the
staging folder. load() downloads the shards whose sha256 the local copy lacks.

Shards are checked against their manifest digest before their first read in the process
(store.py); `verify: false` in the catalog entry turns that off.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.activations.store import MANIFEST, ActivationSet, ActivationStore
from sae_reasoning.datasets.previews import TablePreview, records_preview
from sae_reasoning.datasets.storage import Storage
from sae_reasoning.models.hooks import hook_point


class ActivationStoreDataset(AbstractDataset[CaptureJob, ActivationSet]):
    def __init__(self, *, path: str, credentials: dict[str, Any] | None = None,
                 fs_args: dict[str, Any] | None = None, local_cache: str | None = None,
                 verify: bool = True, metadata: dict[str, Any] | None = None):
        """
        Args:
            path: folder of this model's activations: a local path or an fsspec URL.
            credentials, fs_args: passed to the fsspec filesystem (as in kedro-datasets).
            local_cache: staging folder for a remote `path` (ignored for local paths).
            verify: check each shard against its manifest digest before its first read.
            metadata: free-form (shown by kedro-viz).
        """
        self._storage = Storage(path, credentials=credentials, fs_args=fs_args,
                                local_cache=local_cache, kind="activation store")
        self._protocol = self._storage.protocol
        self._verify = verify
        self.metadata = metadata

    @property
    def _path(self) -> Path:
        """The folder the work happens in: the path itself, or the staging folder of a URL."""
        return self._storage.local

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
                s.fetch(folder, self._path / folder, names,
                        sha256={e["file"]: e["sha256"] for e in m["shards"]})
                _write_if_changed(self._path / rel, raw)
                for f in (self._path / folder).iterdir():  # shards of an earlier, different capture
                    if f.is_file() and not f.name.startswith(".") and f.name not in {*names, MANIFEST}:
                        f.unlink()
        stores: dict[str, dict[str, ActivationStore]] = {}
        for rel in sorted(manifests):
            store = ActivationStore((self._path / rel).parent, verify=self._verify)
            stores.setdefault(rel.split("/", 1)[0], {})[store.hook_point] = store
        return ActivationSet(self._path, stores)

    def save(self, data: CaptureJob) -> None:
        if not isinstance(data, CaptureJob):
            raise DatasetError(f"{self._storage.url}: expected a CaptureJob, got {type(data).__name__}")
        if self._storage.is_local:
            data.run(self._path)
            return
        s = self._storage
        with s.errors("prepare the capture"):
            s.check_writable()
            s.recover()
            remote = s.cat_glob(f"*/*/{MANIFEST}")
            trusted = self._stage(data, remote)
        summary = data.run(self._path)
        hooks = {hook_point(layer) for layer in data.layers}
        for bench in sorted(set(summary["captured"]) | (set(summary["reused"]) & trusted)):
            local = {f"{bench}/{h}/{MANIFEST}": (self._path / bench / h / MANIFEST).read_bytes()
                     for h in hooks}
            theirs = {k: v for k, v in remote.items() if k.split("/", 1)[0] == bench}
            if bench in summary["captured"] or local != theirs:
                s.publish(self._path / bench, bench)
                for h in hooks:  # the shards just uploaded need no hashing on the next load()
                    shards = json.loads(local[f"{bench}/{h}/{MANIFEST}"])["shards"]
                    s.remember(self._path / bench / h, {e["file"]: e["sha256"] for e in shards})

    def _stage(self, job: CaptureJob, remote: dict[str, bytes]) -> set[str]:
        """Make each benchmark's staging folder say what the job may reuse: a complete local
        capture of this job (an earlier upload failed) is kept as is (`trusted`); else the
        folder holds just the remote manifests, so the job reuses what the URL has and
        captures the rest, without downloading any shard."""
        fingerprint, hooks = job.fingerprint(), [hook_point(layer) for layer in job.layers]
        trusted = set()
        for bench in job.names():
            folder = self._path / bench
            if all(_complete(folder / h, fingerprint) for h in hooks):
                trusted.add(bench)
                continue
            shutil.rmtree(folder, ignore_errors=True)
            for rel, raw in remote.items():
                if rel.split("/", 1)[0] == bench:
                    (self._path / rel).parent.mkdir(parents=True, exist_ok=True)
                    (self._path / rel).write_bytes(raw)
        return trusted

    def _exists(self) -> bool:
        if self._storage.is_local:
            return any(self._path.glob(f"*/*/{MANIFEST}"))
        with self._storage.errors("list activations"):
            return bool(self._storage.glob(f"*/*/{MANIFEST}"))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path) if self._storage.is_local else self._storage.url}

    def preview(self) -> TablePreview:
        """kedro-viz: one row per benchmark and hook point, from the manifests alone."""
        if self._storage.is_local:
            raw = {str(p.relative_to(self._path)): p.read_bytes() for p in sorted(self._path.glob(f"*/*/{MANIFEST}"))}
        else:
            with self._storage.errors("preview activations"):
                raw = self._storage.cat_glob(f"*/*/{MANIFEST}")
        rows = []
        for rel in sorted(raw):
            m = json.loads(raw[rel])
            rows.append({"benchmark": rel.split("/", 1)[0], "hook point": m.get("hook_point"),
                         "n_tokens": m.get("n_tokens"), "d_model": m.get("d_model"), "dtype": m.get("dtype"),
                         "shards": len(m.get("shards", [])), "complete": m.get("complete"),
                         "median norm": (m.get("norm_stats") or {}).get("median")})
        return records_preview(rows)


def _complete(folder: Path, fingerprint: str) -> bool:
    """A finished local capture of this job: manifest complete, every shard on disk."""
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (m.get("complete") and m.get("fingerprint") == fingerprint
            and all((folder / e["file"]).is_file() and (folder / e["file"]).stat().st_size == e["bytes"]
                    for e in m["shards"]))


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
