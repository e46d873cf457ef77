"""A throw-away Kedro project of this package: one tiny model, run with the real `kedro run`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
KEDRO = Path(sys.executable).with_name("kedro")


def make_project(root: Path, model_dir: Path, layers: str = "1") -> Path:
    (root / "conf" / "base").mkdir(parents=True)
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()  # kedro checks that source_dir exists; the package is installed
    (root / "pyproject.toml").write_text(
        '[tool.kedro]\npackage_name = "sae_reasoning"\nproject_name = "tiny"\n'
        'kedro_init_version = "1.7.0"\nsource_dir = "src"\n'
    )
    (root / "conf" / "base" / "parameters.yml").write_text(
        f"models:\n  tiny:\n    layers: [{layers}]\n"
        "capture: {}\ncausal: {}\nsae_training: {}\n"
        "data_loading: {}\nbudget: {}\n"
    )
    (root / "conf" / "base" / "catalog.yml").write_text(f"""
tiny.model:
  type: sae_reasoning.datasets.model.ModelDataset
  name: tiny
  pretrained_model_name_or_path: {model_dir}
  converted_cache: null
validation_report:
  type: json.JSONDataset
  filepath: data/08_reporting/validation.json
"{{model}}_validation":
  type: json.JSONDataset
  filepath: data/08_reporting/validation/{{model}}.json
""")
    return root


def kedro_run(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "COLUMNS": "200",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [str(KEDRO), "run", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
