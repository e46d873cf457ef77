"""Composes the project's pipelines; the model namespaces come from configuration."""

from __future__ import annotations

import os
from pathlib import Path

from kedro.config import OmegaConfigLoader
from kedro.framework.project import settings
from kedro.pipeline import Pipeline

from sae_reasoning.hooks import ConfigCaptureHook
from sae_reasoning.pipelines import capture, causal, data_loading, reporting, sae_training, validate

# Dataset inputs that every model reads stay un-namespaced.
SHARED_DATASETS = {"prompts", "examples", "sae_corpus"}

# Stages that run once per model, each inside that model's namespace.
PER_MODEL_STAGES = {
    "capture": capture.create_pipeline,
    "sae_training": sae_training.create_pipeline,
    "causal": causal.create_pipeline,
}


def run_config_loader(hooks=None):
    """The config loader that the project's ConfigCaptureHook kept from the session's
    context (`hooks`: the registered hooks, default the project's settings.HOOKS); None
    when no context was created in this process."""
    kept = [
        h.config_loader
        for h in (settings.HOOKS if hooks is None else hooks)
        if isinstance(h, ConfigCaptureHook)
    ]
    return kept[0] if kept else None


def configured_models(config_loader=None) -> list[str]:
    """Model namespaces, in the order of the `models` parameter block."""
    # Config loaders are (empty) mappings, so test for None, not truthiness.
    loader = next((x for x in (config_loader, run_config_loader()) if x is not None), None)
    loader = loader if loader is not None else _fallback_loader()
    models = loader["parameters"].get("models") or {}
    if not isinstance(models, dict) or not models:
        raise ValueError(
            "parameters: `models` must map each model namespace to its settings "
            "(conf/base/parameters.yml); found none."
        )
    return list(models)


def _fallback_loader() -> OmegaConfigLoader:
    # Used when no Kedro context exists (e.g. a notebook importing the registry).
    project = Path(__file__).resolve().parents[2]
    return OmegaConfigLoader(
        conf_source=str(project / "conf"),
        base_env="base",
        default_run_env="local",
        env=os.environ.get("KEDRO_ENV"),
    )


def namespaced(stage: str, model: str) -> Pipeline:
    """One model's copy of a stage: datasets `<model>.*`, parameters shared except `model`."""
    base = PER_MODEL_STAGES[stage]()
    return Pipeline(
        base,
        namespace=model,
        inputs=base.inputs() & SHARED_DATASETS,
        parameters=_parameter_map(base, model),
    )


def _parameter_map(base: Pipeline, model: str) -> dict[str, str]:
    # `params:model` is the model's own block; every other parameter is shared.
    mapping = {}
    for name in base.inputs():
        if not name.startswith("params:"):
            continue
        if name == "params:model":
            mapping[name] = f"params:models.{model}"
        else:
            mapping[name] = name
    return mapping


def register_pipelines() -> dict[str, Pipeline]:
    models = configured_models()
    stages = {
        stage: sum((namespaced(stage, m) for m in models), Pipeline([]))
        for stage in PER_MODEL_STAGES
    }
    load = data_loading.create_pipeline()
    report = reporting.create_pipeline(models)
    phase4 = load + stages["capture"] + stages["sae_training"] + stages["causal"] + report
    return {
        "__default__": phase4,
        "phase4": phase4,
        "data_loading": load,
        **stages,
        "reporting": report,
        "validate": validate.create_pipeline(models),
    }
