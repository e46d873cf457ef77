"""Shard integrity: the digests a manifest records for each shard, and the check a reader
makes before its first read of a shard in the process.

xxh3_128 (~15 GB/s, recorded since this check exists; xxhash comes with `datasets`) where
recorded and installed, else the sha256 every manifest has. A verified shard is
remembered by its inode, size and times, so later epochs and opens do not hash it again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

try:  # a dependency of `datasets`; without it shards are checked against sha256
    import xxhash
except ImportError:  # pragma: no cover - exercised only where xxhash is missing
    xxhash = None


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
