"""Publish a folder (or file) so that readers never see a half-written copy: one scheme for
SAE folders, activation folders and uploads to fsspec URLs.

    stage    write the new copy beside the final name, under a hidden staging name
    mark     make the staging copy say it is complete (a marker file, or its last file)
    finish   move it over the final name; the previous copy stays until the new one is in
    recover  on the next access: finish a marked staging copy, `abandon` an unmarked one

`StagedSwap` holds the steps; a backend says what they are on its storage. `LocalSwap`
(here) renames folders on a local disk; `storage.RemoteSwap` copies files on an object
store, which has no rename. Every step of `finish` is idempotent, so `recover` may run it
again after any interruption.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


class StagedSwap:
    """stage -> mark -> finish, and recover; names are relative to the backend's root."""

    def publish(self, name: str, write: Callable) -> None:
        """`write(staging)` fills the staging copy (and returns what `mark` records, if
        anything); then it is marked and swapped in."""
        self.recover(name)
        self.clear(name)
        self.mark(name, write(self.staging(name)))
        self.finish(name)

    def recover(self, name: str) -> None:
        if self.is_marked(name):
            self.finish(name)
        else:
            self.abandon(name)

    # -- what a backend defines ---------------------------------------------------------
    def staging(self, name: str):
        raise NotImplementedError

    def clear(self, name: str) -> None:
        """Remove a leftover staging copy before a new one is written."""
        raise NotImplementedError

    def mark(self, name: str, record=None) -> None:
        """Nothing to do where the staging copy's own last file marks it complete."""

    def is_marked(self, name: str) -> bool:
        raise NotImplementedError

    def finish(self, name: str) -> None:
        raise NotImplementedError

    def abandon(self, name: str) -> None:
        """An unmarked staging copy after an interruption: kept by default (a capture resumes
        from it; the next publish clears it)."""


def _rmtree(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


class LocalSwap(StagedSwap):
    """Folders (or files) under `root` on a local disk, swapped in by two renames:
    final -> `.<name>.old`, staging -> final. `recover` also puts back a lone `.old` copy.

    complete(staging): whether a staging copy is complete (its last-written file is there).
    on_abandon(name): what to do with an incomplete staging copy (default: keep it).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        suffix: str = "staging",
        complete: Callable[[Path], bool] = Path.exists,
        on_abandon: Callable[[str], None] | None = None,
    ):
        self.root, self.suffix = Path(root), suffix
        self._complete, self._on_abandon = complete, on_abandon

    def final(self, name: str) -> Path:
        return self.root / name

    def staging(self, name: str) -> Path:
        return self.root / f".{name}.{self.suffix}"

    def old(self, name: str) -> Path:
        return self.root / f".{name}.old"

    def clear(self, name: str) -> None:
        _rmtree(self.staging(name))

    def is_marked(self, name: str) -> bool:
        staging = self.staging(name)
        return staging.exists() and self._complete(staging)

    def finish(self, name: str) -> None:
        final, old = self.final(name), self.old(name)
        if final.exists():
            _rmtree(old)
            os.replace(final, old)
        os.replace(self.staging(name), final)
        _rmtree(old)

    def recover(self, name: str) -> None:
        super().recover(name)
        old, final = self.old(name), self.final(name)
        if old.exists():  # interrupted after final -> old: the old copy is the current one
            if final.exists():
                _rmtree(old)
            else:
                os.replace(old, final)

    def abandon(self, name: str) -> None:
        if self._on_abandon is not None and self.staging(name).exists():
            self._on_abandon(name)
