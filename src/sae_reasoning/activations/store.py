"""Sharded activation storage.

One folder per (model, benchmark, hook point):

    shard_00000.safetensors   activations [n, d_model] (storage dtype) + per-token metadata
                              (example_index, position, token_id int32; norm float32)
    manifest.json             model, hook point, d_model, dtype, token count, shards with
                              sizes, sha256 and xxh3_128, norm statistics, the
                              massive-activation rule

Shards are written to a temporary name and renamed, and the manifest is rewritten the
same way after every shard, so an interrupted capture leaves only complete shards behind.
Readers memory-map shards and always hand out float32.

Readers verify each shard against its manifest digest the first time the process reads
it (digests.py). Norm statistics and the massive-activation rule: norms.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from sae_reasoning.activations.digests import CorruptShardError, shard_digests, shard_mismatch
from sae_reasoning.activations.norms import MassiveActivationFilter, norm_statistics
from sae_reasoning.atomic import atomic_write_bytes, atomic_write_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
META_FIELDS = ("example_index", "position", "token_id")


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim, as Dask advises for
    unmanaged memory). The forward pass frees blocks of ever-changing sizes; without this
    the heap's free holes grow RSS for the first few hundred thousand tokens."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def storage_rows(activations: torch.Tensor, dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations on the CPU in the storage dtype, their float32 norms [n]): the compute a
    ShardWriter needs, done on the calling thread (capture's, not the writer thread's)."""
    acts = activations.detach().to("cpu", torch.float32)
    return acts.to(DTYPES[dtype]), acts.norm(dim=-1)


def _raw(t: torch.Tensor):
    """A numpy view of a CPU tensor's memory (bfloat16 as int16 bits: numpy has no bfloat16)."""
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def write_json_atomic(path: Path, obj) -> None:
    atomic_write_json(path, obj, indent=2, sort_keys=False)


class ShardWriter:
    """Buffers rows for one (model, benchmark, hook point) and writes fixed-size shards."""

    def __init__(
        self,
        folder: str | Path,
        *,
        header: dict,
        d_model: int,
        dtype: str = "float32",
        shard_tokens: int = 65536,
        resume: dict | None = None,
    ):
        """`resume`: the manifest of an interrupted capture of the same job, already cut to
        its complete shards (see capture.py); writing continues after them."""
        if dtype not in DTYPES:
            raise ValueError(
                f"activation storage dtype {dtype!r}: expected one of {sorted(DTYPES)}"
            )
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not os.access(self.folder, os.W_OK):
            raise PermissionError(f"activation folder {self.folder} is not writable")
        self.d_model = d_model
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        self.manifest = resume or {
            "format_version": FORMAT_VERSION,
            **header,
            "d_model": d_model,
            "dtype": dtype,
            "shard_tokens": shard_tokens,
            "n_tokens": 0,
            "complete": False,
            "shards": [],
        }
        # One preallocated shard, filled in place: memory stays one shard per hook point
        # however many tokens pass through (pages are committed only as rows arrive).
        self._buf = {
            "activations": torch.empty(shard_tokens, d_model, dtype=DTYPES[dtype]),
            "norm": torch.empty(shard_tokens, dtype=torch.float32),
            **{k: torch.empty(shard_tokens, dtype=torch.int32) for k in META_FIELDS},
        }
        # Filled through numpy views: a torch copy this size would start an OpenMP team on
        # the writer thread (BackgroundWriter), which then competes with the forward pass
        # for the cores (measured: capture ~10% slower on 2 cores).
        self._rows = {k: _raw(v) for k, v in self._buf.items()}
        self._buffered = 0
        write_json_atomic(self.folder / MANIFEST, self.manifest)

    def add(
        self, activations: torch.Tensor, *, example_index, position, token_id, norm=None
    ) -> None:
        """Append rows [n, d_model] with their per-token metadata (each [n]); `norm`: their
        float32 norms, when the caller has them (storage_rows)."""
        if activations.ndim != 2 or activations.shape[1] != self.d_model:
            raise ValueError(
                f"activations of shape {tuple(activations.shape)} do not match "
                f"d_model={self.d_model}"
            )
        if norm is None or activations.dtype != DTYPES[self.dtype]:
            activations, norm = storage_rows(activations, self.dtype)
        cols = {"activations": activations.detach().cpu(), "norm": torch.as_tensor(norm)}
        for name, value in zip(META_FIELDS, (example_index, position, token_id)):
            cols[name] = torch.as_tensor(value).reshape(-1).cpu()
        cols = {k: _raw(v) for k, v in cols.items()}
        start, n = 0, len(activations)
        while start < n:
            take = min(n - start, self.shard_tokens - self._buffered)
            for k, v in cols.items():
                self._rows[k][self._buffered : self._buffered + take] = v[start : start + take]
            self._buffered += take
            start += take
            if self._buffered == self.shard_tokens:
                self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        if n == 0:
            return
        shard = {k: v[:n] for k, v in self._buf.items()}
        self._buffered = 0

        index = len(self.manifest["shards"])
        name = f"shard_{index:05d}.safetensors"
        data = save(shard)  # bytes in memory: hashed without reading the file back
        try:
            atomic_write_bytes(self.folder / name, data)
        except OSError as exc:
            why = "the disk is full" if exc.errno == errno.ENOSPC else str(exc)
            raise OSError(
                exc.errno,
                f"cannot write activation shard {self.folder / name}: {why}; "
                f"the {index} complete shard(s) before it are kept and a re-run resumes "
                "after them",
            ) from exc
        self.manifest["shards"].append(
            {"file": name, "n_tokens": n, "bytes": len(data), **shard_digests(data)}
        )
        self.manifest["n_tokens"] += n
        write_json_atomic(self.folder / MANIFEST, self.manifest)
        del data
        release_free_memory()

    def close(self, **extra) -> dict:
        """Write the last partial shard, norm statistics, and mark the folder complete."""
        self._flush(self._buffered)
        store = ActivationStore(self.folder, require_complete=False, verify=False)  # just hashed
        self.manifest.update(norm_statistics(store))
        self.manifest.update(extra)
        self.manifest["complete"] = True
        write_json_atomic(self.folder / MANIFEST, self.manifest)
        return self.manifest


class ActivationStore:
    """Read side of one shard folder; shards are memory-mapped, rows come out float32.

    With `verify` (the default) each shard is checked against its manifest digest before
    its first read in this process; a mismatch raises CorruptShardError naming the shard."""

    def __init__(self, folder: str | Path, *, require_complete: bool = True, verify: bool = True):
        self.folder = Path(folder)
        self.verify_reads = verify
        path = self.folder / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"no {MANIFEST} in activation folder {self.folder}")
        self.manifest = json.loads(path.read_text())
        if require_complete and not self.manifest.get("complete"):
            raise ValueError(
                f"activation folder {self.folder} is incomplete (capture was interrupted); "
                "re-run capture to resume it"
            )

    def _remedy(self) -> str:
        # capture.py reuses a benchmark folder whose manifests are complete and whose
        # fingerprint matches, without reading shards: re-running alone would keep this one.
        bench = self.folder.parent
        target = bench if bench.name == self.manifest.get("benchmark") else self.folder
        return (
            f"delete {target} and run `kedro run --pipeline=capture` again to re-capture it "
            "(capture reuses a folder whose manifest is complete and whose fingerprint matches "
            "without reading its shards, so the folder has to go first)"
        )

    def _check(self, i: int, *, cached: bool = True) -> Path:
        entry = self.manifest["shards"][i]
        path = self.folder / entry["file"]
        bad = shard_mismatch(path, entry, cached=cached)
        if bad is not None:
            algo, expected, found = bad
            raise CorruptShardError(
                f"activation shard {path} is corrupted: {MANIFEST} records {algo} {expected}, "
                f"the file has {found}; {self._remedy()}"
            )
        return path

    @contextmanager
    def _open(self, i: int):
        """safe_open of shard i, verified first (once per process) unless verify=False."""
        entry = self.manifest["shards"][i]
        path = self._check(i) if self.verify_reads else self.folder / entry["file"]
        try:
            f = safe_open(str(path), framework="pt")
        except SafetensorError as exc:
            raise CorruptShardError(
                f"activation shard {path}: cannot read its safetensors header "
                f"({exc}); {self._remedy()}"
            ) from exc
        with f:
            yield f

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def hook_point(self) -> str:
        return self.manifest["hook_point"]

    @property
    def median_norm(self) -> float:
        return float(self.manifest.get("norm_stats", {}).get("median", float("nan")))

    def __len__(self) -> int:
        return self.n_tokens

    def shard(self, i: int) -> dict[str, torch.Tensor]:
        """All tensors of shard i (memory-mapped; activations converted to float32)."""
        out = {}
        with self._open(i) as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
        out["activations"] = out["activations"].float()
        return out

    def iter_columns(self, *names: str) -> Iterator[dict[str, torch.Tensor]]:
        """Metadata columns shard by shard (bounded memory, whatever the token count)."""
        for i in range(len(self.manifest["shards"])):
            with self._open(i) as f:
                yield {name: f.get_tensor(name) for name in names}

    def column(self, name: str) -> torch.Tensor:
        """One metadata column over all shards (small: one number per token)."""
        parts = []
        for i in range(len(self.manifest["shards"])):
            with self._open(i) as f:
                parts.append(f.get_tensor(name))
        return torch.cat(parts) if parts else torch.empty(0)

    def metadata(self) -> pd.DataFrame:
        """Per-token metadata: example_index, position, token_id, norm."""
        return pd.DataFrame({k: self.column(k).numpy() for k in (*META_FIELDS, "norm")})

    def verify(self) -> None:
        """Check every shard against its manifest digest now (whether or not verified before)."""
        for i in range(len(self.manifest["shards"])):
            self._check(i, cached=False)

    def iter_rows(
        self, exclude: MassiveActivationFilter | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(activations, keep-mask-applied example_index) per shard, in order."""
        for i in range(len(self.manifest["shards"])):
            s = self.shard(i)
            keep = (
                exclude.keep_mask(s["position"], s["norm"], self.median_norm)
                if exclude
                else torch.ones(len(s["norm"]), dtype=torch.bool)
            )
            yield s["activations"][keep], s["example_index"][keep]


# Which rows of a folder to keep, by example index: one function for all folders, or one
# per folder name (None: every row).
Selection = Callable[[torch.Tensor], torch.Tensor] | Mapping[str, Callable | None] | None


class ActivationSet:
    """All shard folders of one model: {benchmark: {hook point: ActivationStore}}."""

    def __init__(self, root: str | Path, stores: dict[str, dict[str, ActivationStore]]):
        self.root = Path(root)
        self.stores = stores

    @classmethod
    def open(cls, root: str | Path, *, verify: bool = True) -> ActivationSet:
        """`verify`: check each shard's digest before its first read (ActivationStore)."""
        root = Path(root)
        stores: dict[str, dict[str, ActivationStore]] = {}
        for manifest in sorted(root.glob(f"*/*/{MANIFEST}")):
            store = ActivationStore(manifest.parent, verify=verify)
            stores.setdefault(manifest.parent.parent.name, {})[store.hook_point] = store
        if not stores:
            raise FileNotFoundError(f"no activation folders under {root}")
        return cls(root, stores)

    @property
    def benchmarks(self) -> list[str]:
        return sorted(self.stores)

    @property
    def hook_points(self) -> list[str]:
        return sorted({h for per in self.stores.values() for h in per})

    def for_hook(
        self, hook_point: str, benchmarks: list[str] | None = None
    ) -> list[ActivationStore]:
        chosen = benchmarks or self.benchmarks
        missing = [b for b in chosen if hook_point not in self.stores.get(b, {})]
        if missing:
            raise KeyError(
                f"no activations for hook point {hook_point!r} on benchmarks {missing} "
                f"in {self.root}"
            )
        return [self.stores[b][hook_point] for b in chosen]

    def selection(self, select: Selection, benchmarks: list[str] | None = None):
        """(folder names to read, name -> mask function or None) for `select` as
        iter_batches takes it."""
        if isinstance(select, Mapping):
            unknown = sorted(set(select) - set(self.benchmarks))
            if unknown:
                raise KeyError(
                    f"no activation folders {unknown} in {self.root}; found {self.benchmarks}"
                )
            names = [b for b in (benchmarks or list(select)) if b in select]
            return names, select.get
        return list(benchmarks or self.benchmarks), lambda _: select

    def d_model(self, hook_point: str) -> int:
        return self.for_hook(hook_point)[0].d_model

    def n_tokens(self, hook_point: str, exclude: MassiveActivationFilter | None = None) -> int:
        if exclude is None:
            return sum(s.n_tokens for s in self.for_hook(hook_point))
        return sum(
            int(exclude.keep_mask(s.column("position"), s.column("norm"), s.median_norm).sum())
            for s in self.for_hook(hook_point)
        )

    def iter_batches(
        self,
        hook_point: str,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        buffer_tokens: int = 262144,
        exclude: MassiveActivationFilter | None = MassiveActivationFilter(),
        benchmarks: list[str] | None = None,
        drop_last: bool = False,
        select_examples: Selection = None,
    ) -> Iterator[torch.Tensor]:
        """float32 batches [batch_size, d_model] for one hook point, across benchmarks.

        Shuffling visits shards in a random order and mixes rows in a buffer of at most
        `buffer_tokens` rows, so memory stays bounded whatever the store's size.
        `select_examples` maps a tensor of example indices to a keep mask (e.g. a
        train/held-out split by example); or, per folder, {benchmark: mask function, or
        None for every row} (then only those folders are read, e.g. a split that applies
        to the benchmarks but not to a corpus).
        """
        gen = torch.Generator().manual_seed(seed)
        names, select_of = self.selection(select_examples, benchmarks)
        stores = self.for_hook(hook_point, names)
        shards = [
            (s, i, select_of(b))
            for b, s in zip(names, stores)
            for i in range(len(s.manifest["shards"]))
        ]
        if shuffle:
            shards = [shards[j] for j in torch.randperm(len(shards), generator=gen).tolist()]
        buf = _RowBuffer(
            stores[0].d_model, batch_size, buffer_tokens, gen if shuffle else None, drop_last
        )
        for store, i, select in shards:
            s = store.shard(i)
            keep = (
                exclude.keep_mask(s["position"], s["norm"], store.median_norm)
                if exclude
                else torch.ones(len(s["norm"]), dtype=torch.bool)
            )
            if select is not None:
                keep &= select(s["example_index"])
            buf.add(s["activations"][keep])
            if buf.n_pending >= buffer_tokens:
                yield from buf.drain(final=False)
        yield from buf.drain(final=True)


class _RowBuffer:
    """Rows waiting to become batches. A drain shuffles what it holds (with `gen`; None: in
    order) and yields whole batches, keeping half a buffer back to mix with later shards;
    the final drain yields the rest (a short last batch unless drop_last)."""

    def __init__(
        self,
        d_model: int,
        batch_size: int,
        buffer_tokens: int,
        gen: torch.Generator | None,
        drop_last: bool,
    ):
        self.d_model, self.batch_size, self.buffer_tokens = d_model, batch_size, buffer_tokens
        self.gen, self.drop_last = gen, drop_last
        self.pending: list[torch.Tensor] = []
        self.n_pending = 0

    def add(self, rows: torch.Tensor) -> None:
        self.pending.append(rows)
        self.n_pending += len(rows)

    def drain(self, final: bool) -> Iterator[torch.Tensor]:
        buf = torch.cat(self.pending) if self.pending else torch.empty(0, self.d_model)
        if self.gen is not None:
            buf = buf[torch.randperm(len(buf), generator=self.gen)]
        n_out = len(buf) if final else (len(buf) - self.buffer_tokens // 2)
        n_out = (
            (n_out // self.batch_size) * self.batch_size if not final or self.drop_last else n_out
        )
        for start in range(0, n_out, self.batch_size):
            yield buf[start : start + self.batch_size]
        rest = buf[n_out:]
        self.pending, self.n_pending = ([rest] if len(rest) else []), len(rest)
