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


# Few-shot prompts of the benchmarks run to a few hundred tokens; 1024 leaves room.
ASSUMED_SEQ_LEN = 1024
HEADROOM = 1.2  # allocator fragmentation, CUDA context, tokenizer and bookkeeping


def estimate_memory(config, dtype: str, capture: dict | None = None, causal: dict | None = None,
                    sae_training: dict | None = None, seq_len: int = ASSUMED_SEQ_LEN) -> dict:
    """Peak device memory of one model namespace (capture, SAE training, causal), in bytes.

    weights: parameters x dtype size. activations: one no-grad forward pass of the largest
    batch (residual stream, MLP hidden and attention scores of one block at a time).
    sae: the SAE's weights with their gradients and Adam moments (float32), plus a training
    batch of latents. The three add up (the model stays loaded while the SAE trains), and
    the sum gets HEADROOM on top.
    """
    itemsize = DTYPES[dtype].itemsize
    d_model = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    d_mlp = int(getattr(config, "intermediate_size", 0) or getattr(config, "n_inner", 0) or 4 * d_model)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 1)
    weights = estimate_parameters(config) * itemsize
    batch = max(int((capture or {}).get("batch_size", 0) or 0), int((causal or {}).get("batch_size", 0) or 0)) or 16
    activations = batch * seq_len * ((4 * d_model + d_mlp) * 4 + heads * seq_len * itemsize)
    sae = 0
    if sae_training:
        d_sae = int(sae_training.get("expansion_factor", 8)) * d_model
        sae = (2 * d_model * d_sae + d_sae + d_model) * 4 * 4  # weights, grads, Adam m and v
        sae += int(sae_training.get("batch_size", 4096)) * d_sae * 4 * 3  # pre-acts, acts, grads
    total = int((weights + activations + sae) * HEADROOM)
    g = 2**30
    return {
        "total_bytes": total, "weights_bytes": weights, "activations_bytes": activations, "sae_bytes": sae,
        "breakdown": f"weights {weights / g:.2f} + activations {activations / g:.2f} + SAE {sae / g:.2f} GiB, "
                     f"x{HEADROOM} headroom",
    }


def available_memory_bytes() -> tuple[str, int]:
    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return "cuda", int(free)
    return "cpu", int(psutil.virtual_memory().available)


def check_model(model: ModelHandle, model_params: dict, capture: dict | None = None,
                causal: dict | None = None, sae_training: dict | None = None) -> dict:
    """One model's status: ok, or the reason it cannot run.

    The memory need is the runner's (`estimate_memory`, or `memory_gb` in the model's block).
    """
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
    if model_params.get("memory_gb") is not None:
        need = int(float(model_params["memory_gb"]) * 2**30)
    else:
        need = estimate_memory(config, model.spec.dtype, capture, causal, sae_training)["total_bytes"]
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
