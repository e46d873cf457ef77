"""An SAE folder on disk: SAELens files plus our training state, replaced atomically.

    <hook point>/cfg.json, sae_weights.safetensors     SAELens format (saelens_format.py)
                training_summary.json                  fingerprint, inputs, timings, history
                checkpoints/step_*.pt                  training state, for resume

A new SAE is written to `.<name>.staging` (training_summary.json last: it marks the copy
complete) and swapped in by renames (publish.LocalSwap); `recover_sae_folder` completes
or rolls back a swap that was interrupted, so a finished SAE is never lost to a failed run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sae_reasoning.atomic import atomic_write_json
from sae_reasoning.publish import LocalSwap
from sae_reasoning.sae.model import SAE
from sae_reasoning.sae.saelens_format import is_sae_folder, load_sae, save_sae

logger = logging.getLogger(__name__)

SUMMARY_FILENAME = "training_summary.json"
CHECKPOINT_DIRNAME = "checkpoints"


@dataclass(frozen=True)
class StoredSAE:
    """A finished SAE the store already holds (fingerprint match): nothing to write."""

    where: str
    fingerprint: str


def read_summary(folder: str | Path) -> dict | None:
    path = Path(folder) / SUMMARY_FILENAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _complete(staging: Path) -> bool:
    return is_sae_folder(staging) and (staging / SUMMARY_FILENAME).is_file()


class _SAEFolderSwap(LocalSwap):
    """LocalSwap of one SAE folder; the training checkpoints follow the folder when
    `keep_checkpoints` (they belong to the SAE being swapped in), and an incomplete staging
    copy hands its checkpoints back to the folder before it is dropped."""

    def __init__(self, folder: Path, keep_checkpoints: bool = True):
        super().__init__(folder.parent, "staging", complete=_complete, on_abandon=self._drop)
        self.keep_checkpoints = keep_checkpoints

    def finish(self, name: str) -> None:
        ckpts, staged = (
            self.final(name) / CHECKPOINT_DIRNAME,
            self.staging(name) / CHECKPOINT_DIRNAME,
        )
        if self.keep_checkpoints and ckpts.is_dir() and not staged.exists():
            os.replace(ckpts, staged)
        super().finish(name)

    def _drop(self, name: str) -> None:
        staging, folder = self.staging(name), self.final(name)
        ckpts = staging / CHECKPOINT_DIRNAME
        if ckpts.is_dir() and not (folder / CHECKPOINT_DIRNAME).exists():
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(ckpts, folder / CHECKPOINT_DIRNAME)
        self.clear(name)


def recover_sae_folder(folder: str | Path) -> None:
    """Finish (or roll back) a swap that a crash interrupted."""
    folder = Path(folder)
    swap = _SAEFolderSwap(folder)
    if swap.is_marked(folder.name):
        logger.info("completing the interrupted write of SAE %s", folder)
    swap.recover(folder.name)


def write_sae_folder(
    folder: str | Path, sae: SAE, summary: dict | None = None, *, keep_checkpoints: bool = False
) -> None:
    """Atomically replace `folder` with `sae` (SAELens files) and its training summary.

    keep_checkpoints: carry `folder/checkpoints` over (they belong to this SAE's training)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_sae_folder(folder)
    if summary is None:
        summary = sae.training_summary or {"trained_here": False}
    summary = dict(summary)
    if sae.training_log is not None and "history" not in summary:
        summary["history"] = sae.training_log

    def write(staging: Path) -> None:
        save_sae(sae, staging)
        atomic_write_json(
            staging / SUMMARY_FILENAME, summary, indent=1, default=str
        )  # last: marks completeness

    _SAEFolderSwap(folder, keep_checkpoints).publish(folder.name, write)


def holds(folder: str | Path, sae: SAE) -> bool:
    """Whether `folder` already holds this finished SAE (same fingerprint): a reused SAE."""
    fingerprint = (sae.training_summary or {}).get("fingerprint")
    held = read_summary(folder) if is_sae_folder(folder) else None
    return (
        bool(fingerprint)
        and held is not None
        and held.get("finished", False)
        and held.get("fingerprint") == fingerprint
    )


def store_sae_folder(folder: str | Path, sae: SAE) -> bool:
    """Write `sae` into `folder` unless the folder holds it already; True when written.
    The checkpoints stay with an SAE trained here (its summary counts the steps)."""
    if holds(folder, sae):
        return False
    summary = sae.training_summary or {}
    write_sae_folder(
        folder, sae, keep_checkpoints="steps" in summary and summary.get("kind") != "pretrained"
    )
    return True


def load_sae_folder(folder: str | Path, device: str = "cpu") -> SAE:
    """The SAE in `folder`, with `.training_log` and `.training_summary` when present."""
    folder = Path(folder)
    recover_sae_folder(folder)
    sae = load_sae(folder, device=device)
    summary = read_summary(folder)
    if summary is not None:
        sae.training_summary = summary
        sae.training_log = summary.pop("history", None)
    return sae
