"""`SAEDataset`: one model's SAEs, one SAELens-format folder per hook point.

    <path>/                                   e.g. data/06_models/sae/smollm2_135m
      saes.json                               the hook points of the last save (load order)
      blocks.15.hook_resid_post/
        cfg.json, sae_weights.safetensors     SAELens format: sae_lens.SAE.load_from_disk(...)
        training_summary.json                 fingerprint, timings, training history
        checkpoints/                          training state for resume

save({hook point: SAE | StoredSAE}) writes each SAE folder atomically (sae.sae_folder),
unless the folder holds that SAE already (same fingerprint: reused by the sae_training
node, which made the SAEs in the `sae_store` handle, sae_store.py); a StoredSAE is one the
URL holds already. Folders of hook points no longer saved stay on disk (a later run may
reuse them) but are left out of load().
load() -> {hook point: SAE}, each with `.training_log` (loss/mse/l0/dead_fraction ... per
logged step) and `.training_summary` when it was trained here. Folders written by SAELens
itself load too (placed under <path>/<hook point>/).

`path` may be an fsspec URL (s3://..., gcs://..., with `credentials` / `fs_args` as in
kedro-datasets). Training then runs in a local staging folder (`local_cache`, default
data/.staging/<name>-<hash of the URL>), where checkpoints stay for resume; each SAE
saved is uploaded without its checkpoints and swapped in (storage.py `publish`). load()
downloads the SAE files the staging folder lacks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from sae_reasoning.atomic import atomic_write_text
from sae_reasoning.datasets.previews import TablePreview, records_preview
from sae_reasoning.datasets.sae_store import SAEStore, remote_is_sae, remote_summary, sae_folder
from sae_reasoning.datasets.storage import StorageBacked
from sae_reasoning.sae.model import SAE
from sae_reasoning.sae.sae_folder import (
    CHECKPOINT_DIRNAME,
    StoredSAE,
    load_sae_folder,
    read_summary,
    recover_sae_folder,
    store_sae_folder,
)
from sae_reasoning.sae.saelens_format import (
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    is_sae_folder,
    normalize_cfg_dict,
)

logger = logging.getLogger(__name__)

INDEX_FILENAME = "saes.json"


class SAEDataset(StorageBacked, AbstractDataset[dict[str, Any], dict[str, SAE]]):
    """A folder of SAEs in the SAELens on-disk format, keyed by hook point."""

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        local_cache: str | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        """
        Args:
            path: folder of this model's SAEs (one subfolder per hook point): a local path or
                an fsspec URL.
            device: where load() puts the SAEs.
            credentials, fs_args: passed to the fsspec filesystem (as in kedro-datasets).
            local_cache: staging folder for a remote `path` (ignored for local paths).
            metadata: free-form (shown by kedro-viz).
        """
        self._init_storage("SAE folder", path, credentials, fs_args, local_cache, metadata)
        self._device = device

    def store(self) -> SAEStore:
        """The handle the sae_training node makes SAEs in (what `<model>.sae_store` loads)."""
        return SAEStore(self._storage)

    # -- helpers --------------------------------------------------------------------
    def _folder(self, hook_point: str) -> Path:
        return sae_folder(self._path, hook_point)

    def _hook_points(self) -> list[str]:
        if not self._storage.is_local:
            return self._remote_hook_points()
        index = self._path / INDEX_FILENAME
        if index.is_file():
            return list(json.loads(index.read_text())["hook_points"])
        if not self._path.is_dir():
            return []
        return sorted(
            p.name
            for p in self._path.iterdir()
            if p.is_dir() and not p.name.startswith(".") and is_sae_folder(p)
        )

    # -- remote (fsspec URL) --------------------------------------------------------
    def _remote_hook_points(self) -> list[str]:
        s = self._storage
        index = s.cat(INDEX_FILENAME)
        if index is not None:
            return list(json.loads(index)["hook_points"])
        return [h for h in s.list_dirs() if self._remote_is_sae(h)]

    def _remote_is_sae(self, hook: str) -> bool:
        return remote_is_sae(self._storage, hook)

    def _remote_summary(self, hook: str) -> dict | None:
        return remote_summary(self._storage, hook)

    def _load_remote(self) -> dict[str, SAE]:
        s = self._storage
        with s.errors("load SAEs"):
            s.recover()
            hooks = self._hook_points()
            if not hooks:
                raise DatasetError(f"no SAEs in {s.url}")
            for hook in hooks:
                self._folder(hook)  # validates the name
                files = s.list_files(hook)
                if not {SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME} <= set(files):
                    raise DatasetError(
                        f"SAE folder {s.display(hook)} listed in {INDEX_FILENAME} is missing "
                        "or incomplete; re-run sae_training"
                    )
                s.fetch(hook, self._folder(hook), files)
                for f in self._folder(
                    hook
                ).iterdir():  # files of an earlier SAE the URL no longer has
                    if f.is_file() and not f.name.startswith(".") and f.name not in files:
                        f.unlink()
        return {hook: load_sae_folder(self._folder(hook), device=self._device) for hook in hooks}

    def _save_remote(self, data: dict[str, SAE | StoredSAE]) -> None:
        s = self._storage
        with s.errors("prepare saving SAEs"):
            s.check_writable()
            s.recover()
        for hook, item in data.items():
            _check_item(hook, item)
        self._path.mkdir(parents=True, exist_ok=True)
        for hook, item in data.items():
            if isinstance(item, StoredSAE):
                continue
            folder = self._folder(hook)
            store_sae_folder(folder, item)
            s.publish(folder, hook, exclude=(CHECKPOINT_DIRNAME,))
        with s.errors(f"write {INDEX_FILENAME}"):
            s.publish_bytes(
                json.dumps({"hook_points": list(data)}, indent=1).encode(), INDEX_FILENAME
            )

    # -- AbstractDataset ------------------------------------------------------------
    def load(self) -> dict[str, SAE]:
        if not self._storage.is_local:
            return self._load_remote()
        hooks = self._hook_points()
        if not hooks:
            raise DatasetError(f"no SAEs in {self._path}")
        out = {}
        for hook in hooks:
            folder = self._folder(hook)
            recover_sae_folder(folder)
            if not is_sae_folder(folder):
                raise DatasetError(
                    f"SAE folder {folder} listed in {INDEX_FILENAME} is missing or "
                    "incomplete; re-run sae_training"
                )
            out[hook] = load_sae_folder(folder, device=self._device)
        return out

    def save(self, data: dict[str, SAE | StoredSAE]) -> None:
        if not isinstance(data, dict):
            raise DatasetError(
                f"SAEDataset.save expects {{hook point: SAE}}, got {type(data).__name__}"
            )
        if not self._storage.is_local:
            return self._save_remote(data)
        for hook, item in data.items():
            _check_item(hook, item)
        self._path.mkdir(parents=True, exist_ok=True)
        for hook, item in data.items():
            store_sae_folder(self._folder(hook), item)
        atomic_write_text(
            self._path / INDEX_FILENAME, json.dumps({"hook_points": list(data)}, indent=1)
        )

    def _exists(self) -> bool:
        if not self._storage.is_local:
            with self._storage.errors("list SAEs"):
                hooks = self._hook_points()
                return bool(hooks) and all(self._remote_is_sae(h) for h in hooks)
        hooks = self._hook_points()
        return bool(hooks) and all(is_sae_folder(self._path / h) for h in hooks)

    def _describe(self) -> dict[str, Any]:
        return {"path": self._location(), "device": self._device}

    # -- convenience ----------------------------------------------------------------
    def stored_configs(self) -> dict[str, tuple[str, dict]]:
        """{hook point: (folder, cfg.json normalised to the SAELens 6 layout)} of the SAEs that
        load() would return, read without their weights (the pre-flight check compares them
        with the configured model). Folders without a readable cfg.json are left out."""
        out = {}
        for hook in self._hook_points():
            if self._storage.is_local:
                folder = self._folder(hook)
                display = folder.as_posix()
                try:
                    raw = json.loads((folder / SAE_CFG_FILENAME).read_text())
                except (OSError, ValueError):
                    continue
            else:
                display = self._storage.display(hook)
                with self._storage.errors("read SAE configs"):
                    text = self._storage.cat(f"{hook}/{SAE_CFG_FILENAME}")
                try:
                    raw = json.loads(text) if text is not None else None
                except ValueError:
                    raw = None
                if raw is None:
                    continue
            try:
                out[hook] = (display, normalize_cfg_dict(raw, display))
            except ValueError:  # an architecture we cannot run: load() says so
                continue
        return out

    def preview(self) -> TablePreview:
        """kedro-viz: one row per hook point: the SAE's cfg.json and how its training ended."""
        summaries, rows = self.summaries(), []
        for hook, (_, cfg) in self.stored_configs().items():
            meta, final = cfg.get("metadata") or {}, (summaries.get(hook) or {}).get("final") or {}
            rows.append(
                {
                    "hook point": hook,
                    "architecture": cfg.get("architecture"),
                    "d_in": cfg.get("d_in"),
                    "d_sae": cfg.get("d_sae"),
                    "model_name": meta.get("model_name"),
                    "trained_with": meta.get("trained_with"),
                    "tokens_seen": (summaries.get(hook) or {}).get("tokens_seen"),
                    "L0": final.get("l0"),
                    "explained_variance": final.get("explained_variance"),
                    "dead_fraction": final.get("dead_fraction"),
                }
            )
        return records_preview(rows)

    def summaries(self) -> dict[str, dict | None]:
        """training_summary.json of each hook point (without the history)."""
        out = {}
        for hook in self._hook_points():
            s = (
                read_summary(self._folder(hook))
                if self._storage.is_local
                else self._remote_summary(hook)
            )
            if s is not None:
                s.pop("history", None)
            out[hook] = s
        return out


def _check_item(hook: str, item: Any) -> None:
    if isinstance(item, StoredSAE):
        if not item.where.endswith(f"/{hook}"):
            raise DatasetError(f"the stored SAE {item.where} saved under key {hook}")
    elif not isinstance(item, SAE):
        raise DatasetError(f"SAEDataset: cannot save {type(item).__name__} for {hook}")
