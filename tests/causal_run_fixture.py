"""A tiny model's causal run, set up as the causal tests need it: activations captured on the tiny
prompts, the clean baseline scored, and parameters_causal.yml shrunk to a run of seconds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from sae_reasoning.activations import ActivationSet
from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.scoring import encode_prompts, score_conditions
from tests.prompts_fixture import tiny_prompts

CONF = Path(__file__).resolve().parents[1] / "conf" / "base"

# The shipped sizes cut to a CPU run of seconds on a tiny model, each path still exercised:
# features ablated and the controls they are tested against; the null of random features;
# short bootstraps, firing rates and top-activating contexts.
FEATURES = dict(top_k=3, n_random_controls=2, n_random_sets=2, n_random_directions=1)
NULL = dict(n_null_features=6)
STATS = dict(n_boot=100, stats_tokens=400, batch_size=8, n_context_features=3, n_contexts=2)
# The tiny models are not above chance, and every benchmark must still be analysed.
TINY_RUN = {**FEATURES, **NULL, **STATS, "require_above_chance": False}


def shipped_params() -> dict:
    """parameters_causal.yml as the project ships it (every section)."""
    return yaml.safe_load((CONF / "parameters_causal.yml").read_text())


def tiny_causal_params(**overrides) -> dict:
    """The shipped parameters with `causal` set to TINY_RUN, then to each override."""
    params = shipped_params()
    params["causal"].update(TINY_RUN, **overrides)
    return params


def captured_run(
    model_dir: Path, root: Path, layer: int
) -> tuple[ModelHandle, pd.DataFrame, ActivationSet]:
    """(handle, tiny prompts, their activations at `layer` captured under root)."""
    handle = ModelHandle(ModelSpec("tiny", str(model_dir), converted_cache=None))
    prompts = tiny_prompts(n_open=8, n_choice=4)
    CaptureJob(handle, prompts, layers=[layer]).run(root)
    return handle, prompts, ActivationSet.open(root)


def clean_baseline(handle: ModelHandle, prompts: pd.DataFrame, device: str | None = None):
    """The unablated scores the causal node measures effects against. device: where the model
    loads if this is the handle's first load (None: the default device); the handle keeps it."""
    lm = handle.load(device)
    return score_conditions(lm, encode_prompts(lm.tokenizer, prompts), progress=None)["clean"]
