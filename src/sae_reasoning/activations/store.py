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
it: xxh3_128 (~15 GB/s, recorded since this check exists; xxhash comes with `datasets`),
else the sha256 every manifest has. A verified shard is remembered by its inode, size
and times, so later epochs and later opens in the same process do not hash it again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

try:  # a dependency of `datasets`; without it shards are checked against sha256
    import xxhash
except ImportError:  # pragma: no cover - exercised only where xxhash is missing
    xxhash = None

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
META_FIELDS = ("example_index", "position", "token_id")


@dataclass(frozen=True)
class MassiveActivationFilter:
    """Which rows SAE training leaves out.

    Some models write a huge residual norm at the first position of every sequence
    (SmolLM2: ~140x the median at layer 15, whatever the token). Those rows would dominate
    an MSE objective, so by default they are excluded: position 0, and any row whose norm
    exceeds `max_norm_ratio` times the store's median norm. Set both off to keep all rows.
    """

    exclude_first_position: bool = True
    max_norm_ratio: float | None = 10.0

    def keep_mask(self, position: torch.Tensor, norm: torch.Tensor, median_norm: float) -> torch.Tensor:
        keep = torch.ones_like(norm, dtype=torch.bool)
        if self.exclude_first_position:
            keep &= position != 0
        if self.max_norm_ratio is not None:
            keep &= norm <= self.max_norm_ratio * median_norm
        return keep

    def describe(self) -> dict:
        return asdict(self)


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


_LOG_BIN = 1e-3  # relative width of the histogram bins exact_median uses


def exact_median(chunks: Callable[[], Iterable[torch.Tensor]]) -> float | None:
    """torch.median (the lower middle value) of values that arrive in chunks, in bounded
    memory: a log-spaced histogram finds the bin holding the median, a second pass over
    `chunks()` (called twice) sorts only that bin. For positive values such as norms."""
    counts: dict[int, int] = {}
    n = 0
    for x in chunks():
        if len(x):
            bins, c = torch.unique(_log_bin(x), return_counts=True)
            for b, k in zip(bins.tolist(), c.tolist()):
                counts[b] = counts.get(b, 0) + k
            n += len(x)
    if n == 0:
        return None
    k, below = (n - 1) // 2, 0
    for b in sorted(counts):
        if below + counts[b] > k:
            inside = torch.cat([x[_log_bin(x) == b] for x in chunks() if len(x)])
            return float(inside.sort().values[k - below])
        below += counts[b]
    raise AssertionError("unreachable: the counts sum to n")


def _log_bin(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(torch.log(x.double().clamp_min(1e-30)) / _LOG_BIN).long()


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False))
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    return digest_file(path, "sha256")


FAST_DIGEST = "xxh3_128"


def _hasher(algo: str):
    return xxhash.xxh3_128() if algo == FAST_DIGEST else hashlib.new(algo)


def digest_file(path: Path, algo: str) -> str:
    h = _hasher(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_digests(data: bytes) -> dict[str, str]:
    """What a manifest records for a shard: sha256 (storage.py transfers check it) and,
    where xxhash is installed, the much faster xxh3_128 that readers check."""
    out = {"sha256": hashlib.sha256(data).hexdigest()}
    if xxhash is not None:
        out[FAST_DIGEST] = xxhash.xxh3_128_hexdigest(data)
    return out


def _check_algo(entry: dict) -> str:
    """The digest a reader checks: xxh3_128 when recorded and available, else sha256
    (manifests written before xxh3_128 was recorded have only sha256)."""
    return FAST_DIGEST if xxhash is not None and FAST_DIGEST in entry else "sha256"


class CorruptShardError(ValueError):
    """A shard whose bytes do not match its manifest digest, or whose header is unreadable."""


# Shards this process has verified: (device, inode, size, mtime, ctime, algo, digest).
_VERIFIED: set[tuple] = set()


def _stat_key(path: Path, algo: str, digest: str) -> tuple:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, algo, digest)


def shard_mismatch(path: Path, entry: dict, *, cached: bool = True) -> tuple[str, str, str] | None:
    """(algo, expected, found) when the file does not match its manifest entry, else None.
    With `cached`, a file this process already verified (unchanged since) is not re-read."""
    algo = _check_algo(entry)
    expected = entry[algo]
    key = _stat_key(path, algo, expected)
    if cached and key in _VERIFIED:
        return None
    found = digest_file(path, algo)
    if found != expected:
        return algo, expected, found
    _VERIFIED.add(key)
    return None


def forget_verified() -> None:
    """Forget which shards this process verified (benchmarks: time a first read again)."""
    _VERIFIED.clear()


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
            raise ValueError(f"activation storage dtype {dtype!r}: expected one of {sorted(DTYPES)}")
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
        self._buf = {"activations": torch.empty(shard_tokens, d_model, dtype=DTYPES[dtype]),
                     "norm": torch.empty(shard_tokens, dtype=torch.float32),
                     **{k: torch.empty(shard_tokens, dtype=torch.int32) for k in META_FIELDS}}
        self._buffered = 0
        write_json_atomic(self.folder / MANIFEST, self.manifest)

    def add(self, activations: torch.Tensor, *, example_index, position, token_id) -> None:
        """Append rows [n, d_model] with their per-token metadata (each [n])."""
        if activations.ndim != 2 or activations.shape[1] != self.d_model:
            raise ValueError(
                f"activations of shape {tuple(activations.shape)} do not match d_model={self.d_model}"
            )
        acts = activations.detach().to("cpu", torch.float32)
        cols = {"activations": acts, "norm": acts.norm(dim=-1)}
        for name, value in zip(META_FIELDS, (example_index, position, token_id)):
            cols[name] = torch.as_tensor(value).reshape(-1).cpu()
        start = 0
        while start < len(acts):
            take = min(len(acts) - start, self.shard_tokens - self._buffered)
            for k, v in cols.items():
                self._buf[k][self._buffered:self._buffered + take] = v[start:start + take]
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
        tmp = self.folder / f".{name}.tmp"
        data = save(shard)  # bytes in memory: hashed without reading the file back
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.folder / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            why = "the disk is full" if exc.errno == errno.ENOSPC else str(exc)
            raise OSError(exc.errno, f"cannot write activation shard {self.folder / name}: {why}; "
                          f"the {index} complete shard(s) before it are kept and a re-run resumes "
                          "after them") from exc
        self.manifest["shards"].append({"file": name, "n_tokens": n, "bytes": len(data), **shard_digests(data)})
        self.manifest["n_tokens"] += n
        write_json_atomic(self.folder / MANIFEST, self.manifest)
        del data
        release_free_memory()

    def close(self, **extra) -> dict:
        """Write the last partial shard, norm statistics, and mark the folder complete."""
        self._flush(self._buffered)
        store = ActivationStore(self.folder, require_complete=False, verify=False)  # just hashed
        # Shard by shard, so memory does not grow with the token count.
        norms = lambda: (s["norm"] for s in store.iter_columns("norm"))
        firsts = lambda: (s["norm"][s["position"] == 0] for s in store.iter_columns("norm", "position"))
        median = exact_median(norms) or 0.0
        first_median = exact_median(firsts)
        rule = MassiveActivationFilter()
        n = n_first = n_over = n_excluded = 0
        total, peak = 0.0, 0.0
        for cols in store.iter_columns("norm", "position"):
            norm, position = cols["norm"], cols["position"]
            n += len(norm)
            total += float(norm.double().sum())
            peak = max(peak, float(norm.max())) if len(norm) else peak
            n_first += int((position == 0).sum())
            n_over += int((norm > rule.max_norm_ratio * median).sum())
            n_excluded += int((~rule.keep_mask(position, norm, median)).sum())
        self.manifest["norm_stats"] = {
            "median": median,
            "mean": total / n if n else 0.0,
            "max": peak,
            "first_position_median": first_median,
            "first_position_ratio_to_median": first_median / median if first_median is not None and median else None,
        }
        self.manifest["massive_activations"] = {
            # Stated here so a reader of the files knows which rows training leaves out.
            "rule": "SAE training and feature statistics leave out rows at position 0 "
                    "(exclude_first_position) and rows whose norm exceeds max_norm_ratio x "
                    "norm_stats.median; set by the massive_activations parameters",
            "default": rule.describe(),
            "n_first_position": n_first,
            "n_over_max_norm_ratio": n_over,
            "n_excluded_by_default": n_excluded,
        }
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
        return (f"delete {target} and run `kedro run --pipeline=capture` again to re-capture it "
                "(capture reuses a folder whose manifest is complete and whose fingerprint matches "
                "without reading its shards, so the folder has to go first)")

    def _check(self, i: int, *, cached: bool = True) -> Path:
        entry = self.manifest["shards"][i]
        path = self.folder / entry["file"]
        bad = shard_mismatch(path, entry, cached=cached)
        if bad is not None:
            algo, expected, found = bad
            raise CorruptShardError(
                f"activation shard {path} is corrupted: {MANIFEST} records {algo} {expected}, "
                f"the file has {found}; {self._remedy()}")
        return path

    @contextmanager
    def _open(self, i: int):
        """safe_open of shard i, verified first (once per process) unless verify=False."""
        entry = self.manifest["shards"][i]
        path = self._check(i) if self.verify_reads else self.folder / entry["file"]
        try:
            f = safe_open(str(path), framework="pt")
        except SafetensorError as exc:
            raise CorruptShardError(f"activation shard {path}: cannot read its safetensors header "
                                    f"({exc}); {self._remedy()}") from exc
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
            keep = (exclude.keep_mask(s["position"], s["norm"], self.median_norm)
                    if exclude else torch.ones(len(s["norm"]), dtype=torch.bool))
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
    def open(cls, root: str | Path, *, verify: bool = True) -> "ActivationSet":
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

    def for_hook(self, hook_point: str, benchmarks: list[str] | None = None) -> list[ActivationStore]:
        chosen = benchmarks or self.benchmarks
        missing = [b for b in chosen if hook_point not in self.stores.get(b, {})]
        if missing:
            raise KeyError(f"no activations for hook point {hook_point!r} on benchmarks {missing} in {self.root}")
        return [self.stores[b][hook_point] for b in chosen]

    def selection(self, select: Selection, benchmarks: list[str] | None = None):
        """(folder names to read, name -> mask function or None) for `select` as
        iter_batches takes it."""
        if isinstance(select, Mapping):
            unknown = sorted(set(select) - set(self.benchmarks))
            if unknown:
                raise KeyError(f"no activation folders {unknown} in {self.root}; found {self.benchmarks}")
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
        shards = [(s, i, select_of(b)) for b, s in zip(names, stores) for i in range(len(s.manifest["shards"]))]
        if shuffle:
            shards = [shards[j] for j in torch.randperm(len(shards), generator=gen).tolist()]
        pending: list[torch.Tensor] = []
        n_pending = 0

        def drain(final: bool):
            nonlocal pending, n_pending
            buf = torch.cat(pending) if pending else torch.empty(0, stores[0].d_model)
            if shuffle:
                buf = buf[torch.randperm(len(buf), generator=gen)]
            n_out = len(buf) if final else (len(buf) - buffer_tokens // 2)
            n_out = (n_out // batch_size) * batch_size if not final or drop_last else n_out
            for start in range(0, n_out, batch_size):
                yield buf[start:start + batch_size]
            rest = buf[n_out:]
            pending, n_pending = ([rest] if len(rest) else []), len(rest)

        for store, i, select in shards:
            s = store.shard(i)
            keep = (exclude.keep_mask(s["position"], s["norm"], store.median_norm) if exclude
                    else torch.ones(len(s["norm"]), dtype=torch.bool))
            if select is not None:
                keep &= select(s["example_index"])
            rows = s["activations"][keep]
            pending.append(rows)
            n_pending += len(rows)
            if n_pending >= buffer_tokens:
                yield from drain(final=False)
        yield from drain(final=True)
