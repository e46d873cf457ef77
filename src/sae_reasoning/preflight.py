"""Pre-flight checks: every configured model loads, its layers exist, its weights fit.

Reads configs only (no weights), so it runs in seconds and before any expensive work.
"""

from __future__ import annotations

import click
import psutil
import torch

from sae_reasoning.models.loading import DTYPES, ModelHandle, ModelLoadError


class PreflightError(click.ClickException):
    """Shown by the Kedro CLI as a plain message (no traceback)."""


def estimate_parameters(config) -> int:
    """Parameter count from the config, built on the meta device (no memory used)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def available_memory_bytes() -> tuple[str, int]:
    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return "cuda", int(free)
    return "cpu", int(psutil.virtual_memory().available)


def check_model(model: ModelHandle, model_params: dict, overhead: float = 1.3) -> dict:
    """One model's status: ok, or the reason it cannot run."""
    result = {"model": model.name, "source": model.spec.pretrained_model_name_or_path, "ok": False}
    try:
        config = model.config()
    except ModelLoadError as exc:
        return {**result, "error": str(exc)}
    n_layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))
    layers = list(model_params.get("layers", []))
    bad = [x for x in layers if not 0 <= int(x) < n_layers]
    if not layers or bad:
        return {**result, "error": f"layers {layers}: the model has {n_layers} blocks (0..{n_layers - 1})"}
    n_params = estimate_parameters(config)
    need = int(n_params * DTYPES[model.spec.dtype].itemsize * overhead)
    device, free = available_memory_bytes()
    result.update(n_layers=n_layers, d_model=int(config.hidden_size), n_parameters=n_params,
                  memory_needed_gb=round(need / 2**30, 2), memory_free_gb=round(free / 2**30, 2), device=device)
    if need > free:
        return {**result, "error": f"needs ~{need / 2**30:.1f} GiB on {device}, {free / 2**30:.1f} GiB free"}
    return {**result, "ok": True}


def summarize(results: list[dict]) -> dict:
    failed = [r for r in results if not r["ok"]]
    if failed:
        lines = "\n".join(f"  - {r['model']}: {r['error']}" for r in failed)
        raise PreflightError(f"pre-flight check failed for {len(failed)} of {len(results)} model(s):\n{lines}")
    return {"ok": True, "models": results}
