"""Fingerprints: what identifies a trained SAE (trainer version, hook point, the config
fields that shape the weights, the activations' manifests). A finished SAE with the same
fingerprint is reused; a checkpoint with another one is not resumed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sae_reasoning.activations.store import ActivationSet
from sae_reasoning.sae.train_config import TrainingConfig

# Bump when a change to the trainer alters what a given config produces: finished SAEs
# with another version are retrained instead of reused.
TRAINER_VERSION = 3  # 2: architectures, sparse training step; 3: batchtopk threshold
# bias-corrected and calibrated to inference L0 = k


def activation_digest(activations: ActivationSet, hook_point: str) -> dict[str, Any]:
    """What identifies the activations of one hook point (from the manifests, no hashing of
    data: the manifests carry each shard's sha256)."""
    per = {}
    for bench in activations.benchmarks:
        store = activations.stores[bench].get(hook_point)
        if store is None:
            continue
        m = store.manifest
        per[bench] = {
            "model": m.get("model"),
            "d_model": m.get("d_model"),
            "dtype": m.get("dtype"),
            "n_tokens": m.get("n_tokens"),
            "shards": hashlib.sha256(
                "".join(s.get("sha256", s["file"]) for s in m["shards"]).encode()
            ).hexdigest(),
        }
    return per


def fingerprint_inputs(activations: ActivationSet, hook_point: str, config: TrainingConfig) -> dict:
    return {
        "trainer_version": TRAINER_VERSION,
        "hook_point": hook_point,
        "config": config.semantic_dict(),
        "activations": activation_digest(activations, hook_point),
    }


def fingerprint_of(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
