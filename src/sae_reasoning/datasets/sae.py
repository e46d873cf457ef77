"""`SAEDataset`: one model's SAEs, one SAELens-format folder per hook point.

    <path>/                                   e.g. data/06_models/sae/smollm2_135m
      saes.json                               the hook points of the last save (load order)
      blocks.15.hook_resid_post/
        cfg.json, sae_weights.safetensors     SAELens format: sae_lens.SAE.load_from_disk(...)
        training_summary.json                 fingerprint, timings, training history
        checkpoints/                          training state for resume

save({hook point: SAETrainingJob | SAE}): a job reuses the folder's finished SAE when its
fingerprint matches and trains otherwise (see sae.training_job); a plain SAE is written
as is. Every folder is replaced atomically. Folders of hook points no longer saved stay on
disk (a later run may reuse them) but are left out of load().
load() -> {hook point: SAE}, each with `.training_log` (loss/mse/l0/dead_fraction ... per
logged step) and `.training_summary` when it was trained here. Folders written by SAELens
itself load too (placed under <path>/<hook point>/).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from sae_reasoning.sae.model import SAE
from sae_reasoning.sae.saelens_format import is_sae_folder
from sae_reasoning.sae.training_job import (
    SAETrainingJob,
    load_sae_folder,
    read_summary,
    recover_sae_folder,
    write_sae_folder,
)

logger = logging.getLogger(__name__)

INDEX_FILENAME = "saes.json"


class SAEDataset(AbstractDataset[dict[str, Any], dict[str, SAE]]):
    """A folder of SAEs in the SAELens on-disk format, keyed by hook point."""

    def __init__(self, path: str, device: str = "cpu", metadata: dict[str, Any] | None = None):
        """
        Args:
            path: folder of this model's SAEs (one subfolder per hook point).
            device: where load() puts the SAEs.
            metadata: free-form (shown by kedro-viz).
        """
        self._path = Path(path)
        self._device = device
        self.metadata = metadata

    # -- helpers --------------------------------------------------------------------
    def _folder(self, hook_point: str) -> Path:
        if not hook_point or "/" in hook_point or hook_point.startswith("."):
            raise DatasetError(f"SAEDataset: {hook_point!r} cannot name an SAE folder")
        return self._path / hook_point

    def _hook_points(self) -> list[str]:
        index = self._path / INDEX_FILENAME
        if index.is_file():
            return list(json.loads(index.read_text())["hook_points"])
        if not self._path.is_dir():
            return []
        return sorted(p.name for p in self._path.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and is_sae_folder(p))

    # -- AbstractDataset ------------------------------------------------------------
    def load(self) -> dict[str, SAE]:
        hooks = self._hook_points()
        if not hooks:
            raise DatasetError(f"no SAEs in {self._path}")
        out = {}
        for hook in hooks:
            folder = self._folder(hook)
            recover_sae_folder(folder)
            if not is_sae_folder(folder):
                raise DatasetError(f"SAE folder {folder} listed in {INDEX_FILENAME} is missing or "
                                   "incomplete; re-run sae_training")
            out[hook] = load_sae_folder(folder, device=self._device)
        return out

    def save(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            raise DatasetError(f"SAEDataset.save expects {{hook point: SAETrainingJob | SAE}}, "
                               f"got {type(data).__name__}")
        self._path.mkdir(parents=True, exist_ok=True)
        for hook, item in data.items():
            folder = self._folder(hook)
            if isinstance(item, SAETrainingJob):
                if item.hook_point != hook:
                    raise DatasetError(f"job for {item.hook_point} saved under key {hook}")
                item.run(folder)
            elif isinstance(item, SAE):
                write_sae_folder(folder, item)
            else:
                raise DatasetError(f"SAEDataset: cannot save {type(item).__name__} for {hook}")
        index = self._path / INDEX_FILENAME
        tmp = index.with_name(f".{index.name}.tmp")
        tmp.write_text(json.dumps({"hook_points": list(data)}, indent=1))
        os.replace(tmp, index)

    def _exists(self) -> bool:
        hooks = self._hook_points()
        return bool(hooks) and all(is_sae_folder(self._path / h) for h in hooks)

    def _describe(self) -> dict[str, Any]:
        return {"path": PurePosixPath(self._path).as_posix(), "device": self._device}

    # -- convenience ----------------------------------------------------------------
    def summaries(self) -> dict[str, dict | None]:
        """training_summary.json of each hook point (without the history)."""
        out = {}
        for hook in self._hook_points():
            s = read_summary(self._folder(hook))
            if s is not None:
                s.pop("history", None)
            out[hook] = s
        return out
