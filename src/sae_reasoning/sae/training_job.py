"""Lazy SAE training: the sae_training node returns jobs, the SAE dataset runs them.

A node must not hand a half-trained model to the catalog, and a second `kedro run` must
not retrain what has not changed. So `train_sae` (the node) returns one `SAETrainingJob`
per hook point: the ActivationSet, the hook point, the TrainingConfig and a fingerprint
of all three. `SAEDataset.save` calls `job.run(folder)`, which either

  - reuses the finished SAE in `folder` when its training_summary.json carries the same
    fingerprint ("reusing SAE ... (fingerprint match)"), or
  - says why not ("config changed: l1_coefficient 1e-4 -> 2e-4", "activations changed",
    "no finished SAE") and trains, checkpointing into `folder/checkpoints/` so a killed
    run resumes there.

The SAE folder (SAELens files + our training state):

    <hook point>/cfg.json, sae_weights.safetensors     SAELens format (saelens_format.py)
                training_summary.json                  fingerprint, inputs, timings, history
                checkpoints/step_*.pt                  training state, for resume

A finished SAE is written to `.<name>.staging`, then swapped in by renames
(folder -> `.<name>.old`, staging -> folder); `recover_sae_folder` completes or rolls back a
swap that was interrupted, so an existing finished SAE is never lost to a failed run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_reasoning.activations.store import ActivationSet
from sae_reasoning.sae.model import SAE
from sae_reasoning.sae.saelens_format import is_sae_folder, load_sae, save_sae, set_model_name
from sae_reasoning.sae.train import (
    TrainingConfig,
    fingerprint_inputs,
    fingerprint_of,
    train_sae,
)

logger = logging.getLogger(__name__)

SUMMARY_FILENAME = "training_summary.json"
CHECKPOINT_DIRNAME = "checkpoints"


def _staging(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.staging")


def _old(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_summary(folder: str | Path) -> dict | None:
    path = Path(folder) / SUMMARY_FILENAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def recover_sae_folder(folder: str | Path) -> None:
    """Finish (or roll back) a swap that a crash interrupted."""
    folder = Path(folder)
    staging, old = _staging(folder), _old(folder)
    if staging.exists():
        complete = is_sae_folder(staging) and (staging / SUMMARY_FILENAME).is_file()
        if complete:
            logger.info("completing the interrupted write of SAE %s", folder)
            _swap_in(staging, folder, move_checkpoints=True)
        else:
            ckpts = staging / CHECKPOINT_DIRNAME
            if ckpts.is_dir() and not (folder / CHECKPOINT_DIRNAME).exists():
                folder.mkdir(parents=True, exist_ok=True)
                os.replace(ckpts, folder / CHECKPOINT_DIRNAME)
            shutil.rmtree(staging)
    if old.exists():
        if folder.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, folder)


def _swap_in(staging: Path, folder: Path, *, move_checkpoints: bool) -> None:
    old = _old(folder)
    ckpts = folder / CHECKPOINT_DIRNAME
    if move_checkpoints and ckpts.is_dir() and not (staging / CHECKPOINT_DIRNAME).exists():
        os.replace(ckpts, staging / CHECKPOINT_DIRNAME)
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(staging, folder)
    if old.exists():
        shutil.rmtree(old)


def write_sae_folder(folder: str | Path, sae: SAE, summary: dict | None = None, *,
                     keep_checkpoints: bool = False) -> None:
    """Atomically replace `folder` with `sae` (SAELens files) and its training summary.

    keep_checkpoints: carry `folder/checkpoints` over (they belong to this SAE's training)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_sae_folder(folder)
    staging = _staging(folder)
    if staging.exists():
        shutil.rmtree(staging)
    save_sae(sae, staging)
    if summary is None:
        summary = sae.training_summary or {"trained_here": False}
    summary = dict(summary)
    if sae.training_log is not None and "history" not in summary:
        summary["history"] = sae.training_log
    _write_json_atomic(staging / SUMMARY_FILENAME, summary)  # written last: marks completeness
    _swap_in(staging, folder, move_checkpoints=keep_checkpoints)


def load_sae_folder(folder: str | Path, device: str = "cpu") -> SAE:
    """The SAE in `folder`, with `.training_log` and `.training_summary` when present."""
    folder = Path(folder)
    recover_sae_folder(folder)
    sae = load_sae(folder, device=device)
    summary = read_summary(folder)
    if summary is not None:
        sae.training_log = summary.pop("history", None)
        sae.training_summary = summary
    return sae


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
        mantissa, exp = f"{v:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
    return repr(v) if isinstance(v, str) else str(v)


def describe_changes(old: dict | None, new: dict) -> str:
    """Why a stored fingerprint differs: 'config changed: l1_coefficient 1e-4 -> 2e-4'."""
    if not old:
        return "the finished SAE records no fingerprint inputs"
    reasons = []
    if old.get("trainer_version") != new.get("trainer_version"):
        reasons.append(f"trainer version {old.get('trainer_version')} -> "
                       f"{new.get('trainer_version')}")
    if old.get("hook_point") != new.get("hook_point"):
        reasons.append(f"hook point {old.get('hook_point')} -> {new.get('hook_point')}")
    o, n = old.get("config", {}), new.get("config", {})
    changed = [f"{k} {_fmt(o.get(k))} -> {_fmt(n.get(k))}" for k in sorted(set(o) | set(n))
               if o.get(k) != n.get(k)]
    if changed:
        reasons.append("config changed: " + ", ".join(changed))
    oa, na = old.get("activations", {}), new.get("activations", {})
    if oa != na:
        benches = sorted(b for b in set(oa) | set(na) if oa.get(b) != na.get(b))
        reasons.append(f"activations changed ({', '.join(benches)})")
    return "; ".join(reasons) or "fingerprint differs"


@dataclass
class SAETrainingJob:
    """Everything needed to train one SAE; runs when the SAE dataset saves it."""

    activations: ActivationSet
    hook_point: str
    config: TrainingConfig
    # cfg.json metadata.model_name: the model's id or path (the catalog's
    # pretrained_model_name_or_path); None keeps the activations' model (the namespace).
    # Not fingerprinted: it labels the SAE, it does not change it.
    model_name: str | None = None
    inputs: dict = field(init=False, repr=False)
    fingerprint: str = field(init=False)

    def __post_init__(self):
        self.inputs = fingerprint_inputs(self.activations, self.hook_point, self.config)
        self.fingerprint = fingerprint_of(self.inputs)

    def reuse_reason(self, folder: str | Path) -> str | None:
        """None when `folder` holds a finished SAE of this job; otherwise why it does not."""
        folder = Path(folder)
        if not is_sae_folder(folder):
            return f"no finished SAE in {folder}"
        summary = read_summary(folder)
        if summary is None:
            return f"{folder} has no {SUMMARY_FILENAME}"
        if summary.get("fingerprint") == self.fingerprint and summary.get("finished", False):
            return None
        return describe_changes(summary.get("fingerprint_inputs"), self.inputs)

    def run(self, folder: str | Path) -> SAE:
        """Reuse the finished SAE in `folder` or train (resuming from its checkpoints)."""
        folder = Path(folder)
        recover_sae_folder(folder)
        reason = self.reuse_reason(folder)
        if reason is None:
            logger.info("reusing SAE %s (fingerprint match %s)", folder, self.fingerprint)
            if self.model_name and set_model_name(folder, self.model_name):  # relabel, no retraining
                logger.info("SAE %s: cfg.json model_name set to %s", folder, self.model_name)
            return load_sae_folder(folder)
        logger.info("training SAE for %s in %s: %s", self.hook_point, folder, reason)
        result = train_sae(self.activations, self.hook_point, self.config,
                           checkpoint_dir=folder / CHECKPOINT_DIRNAME, fingerprint=self.fingerprint)
        if self.model_name:
            result.sae.cfg.model_name = self.model_name
        summary = {**result.summary, "fingerprint_inputs": self.inputs, "history": result.history}
        write_sae_folder(folder, result.sae, summary, keep_checkpoints=True)
        logger.info("SAE %s: %d steps, %d tokens, %.0f tokens/s", folder, result.summary["steps"],
                    result.summary["tokens_seen"], result.summary["tokens_per_s"] or 0.0)
        return result.sae
