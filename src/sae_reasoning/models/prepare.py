"""One-off model preparation, part of set-up: `make run` runs it before the study.

Every configured model's weights are made ready to load: a GGUF model is dequantised into
its converted cache (SmolLM2-135M: ~25 s, once per machine, like downloading weights; later
runs check the GGUF's sha256 and reuse the cache). Models from the hub or a local folder
need nothing, and are only named. Without it, the first node that loads the model does the
conversion, so the study runs the same either way.

    python -m sae_reasoning.models.prepare [--env ENV]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project


def prepare_models(catalog, models: list[str]) -> dict[str, str]:
    """model namespace -> the folder its weights load from (converting GGUF files once)."""
    out = {}
    for name in models:
        start = time.perf_counter()
        out[name] = catalog.load(f"{name}.model").prepare()
        print(f"{name}: {out[name]} ({time.perf_counter() - start:.1f} s)", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    from sae_reasoning.pipeline_registry import configured_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None, help="Kedro configuration environment")
    args = parser.parse_args(argv)
    project = Path.cwd()
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=args.env) as session:
        context = session.load_context()
        prepare_models(context.catalog, configured_models(context.config_loader))


if __name__ == "__main__":
    main()
