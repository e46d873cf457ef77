"""Where a dataset's files live: a local path, or an fsspec URL (s3://, gcs://, abfs://...).

Local paths (no protocol, or file://) are used in place, as before. For a remote URL the
dataset works in a local staging folder (capture streams shards and safetensors memory-maps
them, both need local files) and this module moves files between the two:

- `fetch`: download what a load needs, skipping local files that are already the same
  (sha256 from a manifest, or the storage's own checksum), each file via a `.part` name;
- `publish`: the project's publish scheme (sae_reasoning.publish) on the remote store:
  upload a finished folder (or file) beside its final name (`.<name>.new`), mark it
  complete (`.<name>.new.json`, the file list), then move it over the final name and drop
  files the new copy does not have (`RemoteSwap`). The previous copy stays until the new
  one is complete; `recover` finishes a publish an interruption cut short, so the URL
  never keeps a half upload.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any

import fsspec
from fsspec.registry import known_implementations
from kedro.io import DatasetError
from kedro.io.core import get_protocol_and_path

from sae_reasoning.activations.digests import sha256_file
from sae_reasoning.atomic import atomic_path, atomic_write_json
from sae_reasoning.publish import StagedSwap

FETCHED = ".fetched.json"  # per local folder: {file: [size, mtime_ns, checksum]} already verified
# Object stores whose folders are only key prefixes. Their makedirs creates a missing bucket
# (s3fs, gcsfs; a container in adlfs), which turned a mistyped bucket name into a new bucket
# instead of an error, so `_parents` skips them.
KEY_PREFIX_STORES = {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"}


def default_staging(url: str) -> Path:
    """data/.staging/<name>-<hash of the URL> in a project, else under the temp dir."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rstrip("/").rsplit("/", 1)[-1])[:48] or "root"
    if Path("data").is_dir():
        base = Path("data/.staging")
    else:
        base = Path(tempfile.gettempdir()) / "sae_reasoning-staging"
    return (base / f"{name}-{key}").resolve()


def _package(protocol: str) -> str:
    cls = known_implementations.get(protocol, {}).get("class", "")
    top = cls.split(".", 1)[0]
    return top if top and top != "fsspec" else f"the fsspec backend for {protocol}://"


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p)


def _write_ledger(local_dir: Path, ledger: dict) -> None:
    atomic_write_json(local_dir / FETCHED, ledger)


class Storage:
    """A dataset's location. `is_local`: use `local` directly; else `fs` + `root` remotely,
    with `local` as the staging folder."""

    def __init__(
        self,
        url: str | os.PathLike,
        *,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        local_cache: str | None = None,
        kind: str = "dataset",
    ):
        self.url, self.kind = str(url), kind
        self.protocol, path = get_protocol_and_path(self.url)
        self.is_local = self.protocol == "file"
        fs_args = deepcopy(fs_args or {})
        self.open_args_load = fs_args.pop("open_args_load", {})
        fs_args.pop("open_args_save", None)  # kedro-datasets' key; uploads here are whole files
        self._local_cache = local_cache
        if self.is_local:
            self.fs, self.root, self._local_cache = None, path, path
            return
        try:
            self.fs = fsspec.filesystem(self.protocol, **deepcopy(credentials or {}), **fs_args)
        except ImportError as exc:
            raise DatasetError(
                f"{kind} {self.url}: the {self.protocol}:// protocol needs a package "
                f"that is not installed ({exc}); `pip install {_package(self.protocol)}` "
                "on every machine that runs this pipeline"
            ) from exc
        except ValueError as exc:
            raise DatasetError(
                f"{kind} {self.url}: fsspec does not know the protocol {self.protocol!r} ({exc})"
            ) from exc
        self.root = self.fs._strip_protocol(path).rstrip("/")

    @property
    def local(self) -> Path:
        """The path itself (local), else the staging folder. The default staging folder is
        chosen where the dataset is used (a Dask worker gets its own), not where it was built."""
        return Path(self._local_cache) if self._local_cache else default_staging(self.display())

    # -- paths and small reads ---------------------------------------------------------
    def remote(self, rel: str = "") -> str:
        return _join(self.root, rel)

    def display(self, rel: str = "") -> str:
        return f"{self.protocol}://{self.remote(rel)}"

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Storage failures (credentials, network, permissions) as errors naming the URL."""
        try:
            yield
        except DatasetError:
            raise
        except Exception as exc:
            raise DatasetError(
                f"{self.kind} {self.url}: cannot {action}: {type(exc).__name__}: {exc}"
            ) from exc

    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self.remote(rel))

    def cat(self, rel: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.remote(rel))
        except FileNotFoundError:
            return None

    def glob(self, pattern: str) -> list[str]:
        """Paths relative to the root matching pattern, leaving out any path with a hidden
        part (staging and publish names start with '.')."""
        prefix = self.remote() + "/"
        found = (p[len(prefix) :] for p in self.fs.glob(self.remote(pattern)))
        return sorted(p for p in found if not any(part.startswith(".") for part in p.split("/")))

    def cat_glob(self, pattern: str) -> dict[str, bytes]:
        """{path relative to the root: bytes} of the files `glob(pattern)` finds."""
        found = self.glob(pattern)
        data = self.fs.cat([self.remote(p) for p in found]) if found else {}
        return {p: data[self.remote(p)] for p in found}

    def _list(self, rel: str, kind: str) -> list[str]:
        """Names (not hidden) of the directories or files in rel."""
        try:
            entries = self.fs.ls(self.remote(rel), detail=True)
        except FileNotFoundError:
            return []
        names = (_basename(e["name"]) for e in entries if e["type"] == kind)
        return sorted(n for n in names if not n.startswith("."))

    def list_dirs(self, rel: str = "") -> list[str]:
        return self._list(rel, "directory")

    def list_files(self, rel: str = "") -> list[str]:
        return self._list(rel, "file")

    def check_writable(self) -> None:
        """Fail before any expensive work when the URL cannot take files."""
        probe = self.remote(f".write-probe-{uuid.uuid4().hex[:12]}")
        try:
            self._parents([probe])
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except Exception as exc:
            raise DatasetError(
                f"{self.kind} {self.url} is not writable ({type(exc).__name__}: {exc}); "
                "check the credentials / fs_args in the catalog"
            ) from exc

    # -- download ------------------------------------------------------------------------
    def fetch(
        self, rel_dir: str, local_dir: Path, names: list[str], sha256: dict[str, str] | None = None
    ) -> None:
        """Make local_dir/<name> equal to the remote rel_dir/<name> for each name.

        A local file is kept when it matches `sha256[name]` (or, without sha256, the
        storage's checksum of the remote file); a file verified once is not hashed again
        while its size and mtime stay the same."""
        local_dir.mkdir(parents=True, exist_ok=True)
        try:
            ledger = json.loads((local_dir / FETCHED).read_text())
        except (OSError, ValueError):
            ledger = {}
        for name in names:
            remote, target = self.remote(_join(rel_dir, name)), local_dir / name
            expected = sha256[name] if sha256 else str(self.fs.checksum(remote))
            if target.is_file():
                st = target.stat()
                if ledger.get(name) == [st.st_size, st.st_mtime_ns, expected]:
                    continue
                if sha256 and sha256_file(target) == expected:
                    ledger[name] = [st.st_size, st.st_mtime_ns, expected]
                    continue
            with atomic_path(target) as part:
                self.fs.get_file(remote, str(part))
                if sha256 and sha256_file(part) != expected:
                    raise DatasetError(
                        f"{self.display(_join(rel_dir, name))}: the downloaded file's sha256 "
                        "does not match its manifest"
                    )
            st = target.stat()
            ledger[name] = [st.st_size, st.st_mtime_ns, expected]
        _write_ledger(local_dir, {k: v for k, v in ledger.items() if k in names})

    @staticmethod
    def remember(local_dir: Path, checksums: dict[str, str]) -> None:
        """Record local files known to equal their remote copies (just uploaded), so the
        next fetch does not hash them again."""
        ledger = {}
        for name, checksum in checksums.items():
            st = (local_dir / name).stat()
            ledger[name] = [st.st_size, st.st_mtime_ns, checksum]
        _write_ledger(local_dir, ledger)

    # -- upload ------------------------------------------------------------------------
    def publish(self, local: Path, rel: str, exclude: tuple[str, ...] = ()) -> None:
        """Replace rel (a folder, or a file when `local` is a file) with `local`."""
        if local.is_file():
            files = [""]
        else:
            files = sorted(
                p.relative_to(local).as_posix()
                for p in local.rglob("*")
                if p.is_file()
                and not any(
                    part.startswith(".") or part in exclude for part in p.relative_to(local).parts
                )
            )

        def upload(new: str) -> list[str]:
            targets = [self.remote(_join(new, f)) for f in files]
            self._parents(targets)
            self.fs.put([str(local / f) if f else str(local) for f in files], targets)
            return files

        try:
            RemoteSwap(self).publish(rel, upload)
        except Exception as exc:
            raise DatasetError(
                f"{self.kind}: uploading {local} to {self.display(rel)} failed "
                f"({type(exc).__name__}: {exc}); the copy there before this run is "
                f"kept (or completed on the next access), the local copy stays in "
                f"{local}"
            ) from exc

    def publish_bytes(self, data: bytes, rel: str) -> None:
        def upload(new: str) -> list[str]:
            self._parents([self.remote(new)])
            self.fs.pipe_file(self.remote(new), data)
            return [""]

        RemoteSwap(self).publish(rel, upload)

    def recover(self, rel: str = "", only: str | None = None) -> None:
        """Complete publishes in rel (of `only`, when given) that an interruption cut short."""
        try:
            names = [_basename(e) for e in self.fs.ls(self.remote(rel), detail=False)]
        except FileNotFoundError:
            return
        for name in names:
            m = re.fullmatch(r"\.(.+)\.new\.json", name)
            if m and only in (None, m.group(1)):
                RemoteSwap(self).finish(_join(rel, m.group(1)))

    def _parents(self, paths: list[str]) -> None:
        """Create the parent folders (needed where folders are real: sftp, hdfs...; not needed
        on object stores, skipped there: see KEY_PREFIX_STORES)."""
        if self.protocol in KEY_PREFIX_STORES:
            return
        for parent in sorted({p.rpartition("/")[0] for p in paths} - {""}):
            self.fs.makedirs(parent, exist_ok=True)

    def _files(self, path: str) -> list[str]:
        if not self.fs.exists(path):
            return []
        if self.fs.isfile(path):
            return [self.fs._strip_protocol(path)]
        return [self.fs._strip_protocol(p) for p in self.fs.find(path)]


class RemoteSwap(StagedSwap):
    """The publish scheme (sae_reasoning.publish) on an fsspec store, where names are paths
    relative to the storage root. Object stores cannot rename, so `finish` copies the staged
    files over the final name (server-side) and then drops the final's files the new copy
    lacks; the marker `.<name>.new.json` lists the files, so `finish` can run again."""

    def __init__(self, storage: Storage):
        self.s = storage

    def staging(self, rel: str) -> str:
        parent, _, name = rel.rpartition("/")
        return _join(parent, f".{name}.new")

    def _marker(self, rel: str) -> str:
        return self.s.remote(self.staging(rel) + ".json")

    def clear(self, rel: str) -> None:
        if self.s.exists(self.staging(rel)):
            self.s.fs.rm(self.s.remote(self.staging(rel)), recursive=True)

    def mark(self, rel: str, record=None) -> None:
        self.s.fs.pipe_file(self._marker(rel), json.dumps({"files": record}).encode())

    def is_marked(self, rel: str) -> bool:
        return self.s.fs.exists(self._marker(rel))

    def finish(self, rel: str) -> None:
        """Move a complete `.<name>.new` over rel, then drop rel's files it lacks."""
        s = self.s
        new, final = s.remote(self.staging(rel)), s.remote(rel)
        files = json.loads(s.fs.cat_file(self._marker(rel)))["files"]
        pending = set(s._files(new))
        src = [_join(new, f) for f in files if _join(new, f) in pending]
        if src:
            dst = [_join(final, f[len(new) :]) for f in src]
            s._parents(dst)
            s.fs.copy(src, dst)  # server-side on object stores; the list form batches
            s.fs.rm(src)
        wanted = {_join(final, f) for f in files}
        extra = [p for p in s._files(final) if p not in wanted]
        if extra:
            s.fs.rm(extra)
        if s.fs.exists(new):
            s.fs.rm(new, recursive=True)
        s.fs.rm_file(self._marker(rel))


class StorageBacked:
    """The set-up the fsspec-backed datasets share (activations, SAEs, scores, store handles):
    their Storage, `_protocol`, `metadata` and `_path`. Each dataset still lists its own
    arguments in its __init__ (the catalog passes its YAML keys there, users read it) and
    hands the storage ones to `_init_storage`."""

    _storage: Storage

    def _init_storage(
        self,
        kind: str,
        path: str,
        credentials: dict[str, Any] | None,
        fs_args: dict[str, Any] | None,
        local_cache: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """`kind` names the storage in errors; the rest are the dataset's own arguments."""
        self._storage = Storage(
            path, credentials=credentials, fs_args=fs_args, local_cache=local_cache, kind=kind
        )
        self._protocol = self._storage.protocol
        self.metadata = metadata

    @property
    def _path(self) -> Path:
        """Where the work happens: the path itself, or the staging folder of a URL. With
        `_protocol` (is it shared storage?) what the runner's location check reads."""
        return self._storage.local

    def _location(self) -> str:
        """For _describe: the local path, or the URL."""
        return str(self._path) if self._storage.is_local else self._storage.url
