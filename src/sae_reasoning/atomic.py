"""Atomic writes: a reader sees the old file or the new one, never half of either.

Every write goes to a temporary name in the same folder (same filesystem, so the rename is
atomic), is flushed to disk, and is renamed over the target with `os.replace`. The
temporary name is hidden (leading dot) and carries the process id, so two processes
writing the same file (the run lock's holder record) never share a temporary file.

Whole folders are replaced by `sae_reasoning.publish` (staging, swap, recover).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_path(path: Path, unique: bool = False) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp" if unique else f".{path.name}.tmp")


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


@contextmanager
def atomic_path(
    path: str | os.PathLike, mode: int | None = None, unique: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that needs one (torch.save,
    pq.write_table, save_pretrained into a folder); on success it replaces `path`, on
    error it is removed. `mode`: chmod the file before the rename."""
    path = Path(path)
    tmp = temp_path(path, unique)
    if tmp.is_dir():  # a folder left by an interrupted writer
        shutil.rmtree(tmp)
    try:
        yield tmp
        _fsync(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        if tmp.is_dir() and path.exists():  # os.replace cannot replace a folder by a folder
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, unique: bool = False) -> None:
    with atomic_path(path, unique=unique) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, unique: bool = False) -> None:
    atomic_write_bytes(path, text.encode(), unique)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> None:
    """json.dumps(obj, **dumps_kwargs) written atomically."""
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs))
