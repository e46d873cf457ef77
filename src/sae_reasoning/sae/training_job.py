"""SAE training as a job: train one SAE, or reuse the finished one a folder already holds.

A second `kedro run` must not retrain what has not changed. So the sae_training node builds
one `SAETrainingJob` per hook point (the ActivationSet, the hook point, the TrainingConfig
and a fingerprint of all three) and calls `job.make_sae(folder)` on the folder the SAE
store hands it, which either

  - reuses the finished SAE in `folder` when its training_summary.json carries the same
    fingerprint ("reusing SAE ... (fingerprint match)"), or
  - says why not ("config changed: l1_coefficient 1e-4 -> 2e-4", "activations changed",
    "no finished SAE") and trains, checkpointing into `folder/checkpoints/` so a killed
    run resumes there.

The node returns the SAE (with its summary); the SAE dataset writes the folder
(sae_folder.py). `job.run(folder)` does both, for use outside Kedro.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_reasoning.activations.store import ActivationSet
from sae_reasoning.sae.model import SAE
from sae_reasoning.sae.sae_folder import (
    CHECKPOINT_DIRNAME,
    SUMMARY_FILENAME,
    load_sae_folder,
    read_summary,
    recover_sae_folder,
    store_sae_folder,
    write_sae_folder,
)
from sae_reasoning.sae.saelens_format import is_sae_folder, set_model_name
from sae_reasoning.sae.train import (
    TrainingConfig,
    fingerprint_inputs,
    fingerprint_of,
    train_sae,
)

logger = logging.getLogger(__name__)

__all__ = ["SAETrainingJob", "describe_changes", "load_sae_folder", "write_sae_folder"]


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
        reasons.append(
            f"trainer version {old.get('trainer_version')} -> {new.get('trainer_version')}"
        )
    if old.get("hook_point") != new.get("hook_point"):
        reasons.append(f"hook point {old.get('hook_point')} -> {new.get('hook_point')}")
    o, n = old.get("config", {}), new.get("config", {})
    changed = [
        f"{k} {_fmt(o.get(k))} -> {_fmt(n.get(k))}"
        for k in sorted(set(o) | set(n))
        if o.get(k) != n.get(k)
    ]
    if changed:
        reasons.append("config changed: " + ", ".join(changed))
    oa, na = old.get("activations", {}), new.get("activations", {})
    if oa != na:
        benches = sorted(b for b in set(oa) | set(na) if oa.get(b) != na.get(b))
        reasons.append(f"activations changed ({', '.join(benches)})")
    return "; ".join(reasons) or "fingerprint differs"


@dataclass
class SAETrainingJob:
    """Everything needed to train one SAE at one hook point."""

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

    def make_sae(self, folder: str | Path) -> SAE:
        """Reuse the finished SAE in `folder` or train (resuming from its checkpoints); the
        SAE comes back with `.training_summary` and `.training_log`, not yet written."""
        folder = Path(folder)
        recover_sae_folder(folder)
        reason = self.reuse_reason(folder)
        if reason is None:
            logger.info("reusing SAE %s (fingerprint match %s)", folder, self.fingerprint)
            if self.model_name and set_model_name(
                folder, self.model_name
            ):  # relabel, no retraining
                logger.info("SAE %s: cfg.json model_name set to %s", folder, self.model_name)
            return load_sae_folder(folder)
        logger.info("training SAE for %s in %s: %s", self.hook_point, folder, reason)
        result = train_sae(
            self.activations,
            self.hook_point,
            self.config,
            checkpoint_dir=folder / CHECKPOINT_DIRNAME,
            fingerprint=self.fingerprint,
        )
        if self.model_name:
            result.sae.cfg.model_name = self.model_name
        result.sae.training_summary = {**result.summary, "fingerprint_inputs": self.inputs}
        result.sae.training_log = result.history
        logger.info(
            "SAE %s: %d steps, %d tokens, %.0f tokens/s",
            folder,
            result.summary["steps"],
            result.summary["tokens_seen"],
            result.summary["tokens_per_s"] or 0.0,
        )
        return result.sae

    def run(self, folder: str | Path) -> SAE:
        """make_sae, then write the folder (unless it holds that SAE already)."""
        sae = self.make_sae(folder)
        store_sae_folder(folder, sae)
        return sae
