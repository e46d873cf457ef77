"""Checkpoint files of the trainer: `step_<n>.pt` in a folder, the latest kept."""

from __future__ import annotations

from pathlib import Path

import torch

from sae_reasoning.atomic import atomic_path

CHECKPOINT_FORMAT = 3  # 3: batchtopk state holds topk_threshold_steps


def latest_checkpoint(folder: str | Path | None) -> Path | None:
    if folder is None or not Path(folder).is_dir():
        return None
    found = sorted(Path(folder).glob("step_*.pt"))
    return found[-1] if found else None


def save_checkpoint(folder: Path, state: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{state['step']:09d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in folder.glob("step_*.pt"):
        if old != path:
            old.unlink()
    return path


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
