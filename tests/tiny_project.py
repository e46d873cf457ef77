"""A copy of the project with a tiny Kedro environment `conf/tiny`: tiny random models, small
generated benchmarks, small SAEs. Shared by the end-to-end and fault-injection tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
KEDRO = str(Path(sys.executable).with_name("kedro"))

# namespace -> (tiny model family, layers)
TINY_MODELS = {"tiny_llama": ("llama", [1]), "tiny_gpt2": ("gpt2", [2])}


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _merge(into: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def make_tiny_env(
    project: Path, model_dirs: dict, models: dict | None = None, overrides: dict | None = None
) -> None:
    """Write conf/tiny. `models`: namespace -> (family, layers), default TINY_MODELS;
    `overrides`: parameters merged (recursively) over the tiny ones."""
    models = TINY_MODELS if models is None else models
    base, env = project / "conf" / "base", project / "conf" / "tiny"
    env.mkdir(parents=True)
    catalog = {
        f"{name}.model": {
            "type": "sae_reasoning.datasets.model.ModelDataset",
            "name": name,
            "pretrained_model_name_or_path": str(model_dirs[family]),
            "metadata": {"kedro-viz": {"layer": "models"}},
        }
        for name, (family, _) in models.items()
    }
    raw = _yaml(base / "catalog_data_loading.yml")
    for name, size in (("gsm8k_raw", 40), ("math_raw", 40), ("logic_raw", 40)):
        catalog[name] = {**raw[name], "size": size}
    corpus = raw["sae_corpus"]  # a small SAE training corpus of the same tasks
    catalog["sae_corpus"] = {
        **corpus,
        "benchmarks": {b: {**cfg, "size": 20} for b, cfg in corpus["benchmarks"].items()},
    }
    (env / "catalog.yml").write_text(yaml.safe_dump(catalog))

    params = {"models": {name: {"layers": layers} for name, (_, layers) in models.items()}}
    data = _yaml(base / "parameters_data_loading.yml")["data_loading"]
    for b in data["benchmarks"].values():
        b.update(n_examples=12, n_shots=2, shot_pool=4)
    params["data_loading"] = data
    sae = _yaml(base / "parameters_sae_training.yml")["sae_training"]
    sae.update(
        expansion_factor=4,
        batch_size=256,
        epochs=2,
        checkpoint_every=5,
        progress=False,
        init_sample_tokens=512,
        eval_every=5,
    )
    params["sae_training"] = sae
    capture = _yaml(base / "parameters_capture.yml")["capture"]
    capture["corpus"].update(max_tokens=1500, context_tokens=64)
    params["capture"] = capture
    causal = _yaml(base / "parameters_causal.yml")["causal"]
    # Tiny random models answer at chance: analyse every benchmark anyway, to run the whole path
    # (the gate itself is tested in tests/causal/test_selection.py).
    causal.update(
        top_k=4,
        n_random_controls=3,
        n_null_features=20,
        stats_tokens=500,
        batch_size=8,
        require_above_chance=False,
    )
    params["causal"] = causal
    for section, values in (overrides or {}).items():
        if section not in params:
            params[section] = _yaml(base / f"parameters_{section}.yml")[section]
        _merge(params[section], values) if isinstance(values, dict) else params.__setitem__(
            section, values
        )
    (env / "parameters.yml").write_text(yaml.safe_dump(params))


def copy_project(root: Path) -> Path:
    """pyproject, conf (without conf/local's contents) and src copied into `root`."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "pyproject.toml", root)
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    shutil.copytree(
        REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    return root


def kedro_env() -> dict:
    return {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
    }


def kedro(project: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [KEDRO, "run", *args],
        cwd=project,
        env=kedro_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
