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
    # from_config leaves a tied unembedding as its own matrix; tie it as loading does, so
    # parameters() counts it once (SmolLM2-135M: 162.8M -> 134.5M, the loaded model's count).
    model.tie_weights()
    return sum(p.numel() for p in model.parameters())


# Few-shot prompts of the benchmarks run to a few hundred tokens; 1024 leaves room.
ASSUMED_SEQ_LEN = 1024
HEADROOM = 1.2  # allocator fragmentation, CUDA context, tokenizer and bookkeeping


def estimate_memory(
    config,
    dtype: str,
    capture: dict | None = None,
    causal: dict | None = None,
    sae_training: dict | None = None,
    seq_len: int = ASSUMED_SEQ_LEN,
) -> dict:
    """Peak device memory of one model namespace (capture, SAE training, causal), in bytes.

    weights: parameters x dtype size. activations: one no-grad forward pass of the largest
    batch (residual stream, MLP hidden and attention scores of one block at a time).
    sae: the SAE's weights with their gradients and Adam moments (float32), plus a training
    batch of latents. The three add up (the model stays loaded while the SAE trains), and
    the sum gets HEADROOM on top.
    """
    itemsize = DTYPES[dtype].itemsize
    d_model = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    d_mlp = int(
        getattr(config, "intermediate_size", 0) or getattr(config, "n_inner", 0) or 4 * d_model
    )
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 1)
    weights = estimate_parameters(config) * itemsize
    batch = (
        max(
            int((capture or {}).get("batch_size", 0) or 0),
            int((causal or {}).get("batch_size", 0) or 0),
        )
        or 16
    )
    activations = batch * seq_len * ((4 * d_model + d_mlp) * 4 + heads * seq_len * itemsize)
    sae = 0
    if sae_training:
        d_sae = int(sae_training.get("expansion_factor", 8)) * d_model
        sae = (2 * d_model * d_sae + d_sae + d_model) * 4 * 4  # weights, grads, Adam m and v
        sae += int(sae_training.get("batch_size", 4096)) * d_sae * 4 * 3  # pre-acts, acts, grads
    total = int((weights + activations + sae) * HEADROOM)
    g = 2**30
    return {
        "total_bytes": total,
        "weights_bytes": weights,
        "activations_bytes": activations,
        "sae_bytes": sae,
        "breakdown": f"weights {weights / g:.2f} + activations {activations / g:.2f} + "
        f"SAE {sae / g:.2f} GiB, x{HEADROOM} headroom",
    }


def available_memory_bytes() -> tuple[str, int]:
    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return "cuda", int(free)
    return "cpu", int(psutil.virtual_memory().available)


def check_model(
    model: ModelHandle,
    model_params: dict,
    capture: dict | None = None,
    causal: dict | None = None,
    sae_training: dict | None = None,
) -> dict:
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
        return {
            **result,
            "error": f"layers {layers}: the model has {n_layers} blocks (0..{n_layers - 1})",
        }
    n_params = estimate_parameters(config)
    if model_params.get("memory_gb") is not None:
        need = int(float(model_params["memory_gb"]) * 2**30)
    else:
        need = estimate_memory(config, model.spec.dtype, capture, causal, sae_training)[
            "total_bytes"
        ]
    device, free = available_memory_bytes()
    result.update(
        n_layers=n_layers,
        d_model=int(config.hidden_size),
        n_parameters=n_params,
        memory_needed_gb=round(need / 2**30, 2),
        memory_free_gb=round(free / 2**30, 2),
        device=device,
    )
    if need > free:
        return {
            **result,
            "error": f"needs ~{need / 2**30:.1f} GiB on {device}, {free / 2**30:.1f} GiB free",
        }
    return {**result, "ok": True}


def report(results: list[dict]) -> dict:
    """The validation report (validation.json): ok, and every model's result."""
    failed = [r for r in results if not r["ok"]]
    return {"ok": not failed, "failed": [r["model"] for r in failed], "models": results}


def raise_on_failure(report: dict) -> None:
    """PreflightError listing the failed models of a `report` (after it has been written)."""
    failed = [r for r in report["models"] if not r["ok"]]
    if failed:
        lines = "\n".join(f"  - {r['model']}: {r['error']}" for r in failed)
        raise PreflightError(
            f"pre-flight check failed for {len(failed)} of {len(report['models'])} "
            f"model(s):\n{lines}"
        )


def summarize(results: list[dict]) -> dict:
    """The report when every model passed; PreflightError otherwise."""
    out = report(results)
    raise_on_failure(out)
    return out


# -- SAE folders vs the configured model ---------------------------------------------------


def model_aliases(namespace: str, model: ModelHandle) -> set[str]:
    """Names an SAE's cfg.json `model_name` may give this model: the HF id or path (what this
    project writes, and its last part), the namespace (what it wrote before issue 15), the
    catalog name, the GGUF file."""
    spec = model.spec
    names = {namespace, spec.name, spec.pretrained_model_name_or_path}
    src = spec.pretrained_model_name_or_path.rstrip("/")
    names.add(src.rsplit("/", 1)[-1])
    if spec.gguf_file:
        names.update({spec.gguf_file, spec.gguf_file.rsplit(".", 1)[0]})
    try:
        names.add(str(spec.resolved_path()))
    except ModelLoadError:
        pass
    return {n for n in names if n}


def sae_mismatches(
    cfg: dict,
    hook: str,
    d_model: int,
    hook_points: list[str],
    aliases: set[str],
    transfer: bool = False,
) -> list[str]:
    """Why the SAE stored for `hook` (cfg: cfg.json normalised by `normalize_cfg_dict`) does
    not fit the model: width, hook point, model name (the last one unless `transfer`)."""
    out = []
    d_in = cfg.get("d_in")
    if d_in is not None and int(d_in) != int(d_model):
        out.append(f"d_in {d_in} but the model's d_model is {d_model}")
    meta = cfg.get("metadata") or {}
    if hook_points and hook not in hook_points:
        out.append(f"hook point {hook} is not one of the configured hook points {hook_points}")
    hook_name = meta.get("hook_name")
    if hook_name and _canonical(hook_name) != _canonical(hook):  # resid_pre L == resid_post L-1
        out.append(f"cfg.json hook_name is {hook_name!r}, but the SAE is used at {hook}")
    model_name = meta.get("model_name")
    if model_name and not transfer and str(model_name) not in aliases:
        out.append(
            f"cfg.json model_name is {model_name!r}, not this model (set "
            "`sae_transfer: true` in its `models` block to use an SAE of another model "
            "on purpose)"
        )
    return out


def _canonical(hook: str) -> str:
    from sae_reasoning.models.hooks import HookPointError, canonical_hook_point

    try:
        return canonical_hook_point(hook)
    except HookPointError:
        return hook


def check_sae_folders(
    namespace: str,
    model: ModelHandle,
    model_params: dict,
    stored: dict[str, tuple[str, dict]],
    hook_points: list[str],
) -> list[str]:
    """One line per SAE folder that does not fit the configured model, naming the folder,
    the model and each mismatch. `stored`: {hook point: (folder, normalised cfg.json)}.
    Reads the model's config only (no weights). Hook points named in `sae_source` were
    chosen for this model on purpose: their cfg.json model_name (e.g. SAELens's
    'gpt2-small' for HF 'gpt2') is not checked."""
    if not stored:
        return []
    try:
        config = model.config()
    except ModelLoadError as exc:
        raise PreflightError(f"cannot check the SAE folders of {namespace!r}: {exc}") from exc
    d_model = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    aliases = model_aliases(namespace, model)
    transfer = bool(model_params.get("sae_transfer", False))
    source = model.spec.pretrained_model_name_or_path
    sourced = _sourced_hooks(model_params, hook_points)
    lines = []
    for hook, (folder, cfg) in stored.items():
        problems = sae_mismatches(
            cfg, hook, d_model, hook_points, aliases, transfer or hook in sourced
        )
        if problems:
            lines.append(
                f"SAE folder {folder} does not fit model {namespace!r} ({source}): "
                + "; ".join(problems)
            )
    return lines


def _sourced_hooks(model_params: dict, hook_points: list[str]) -> set[str]:
    from sae_reasoning.sae.pretrained import SAESourceError, parse_sae_sources

    try:
        return set(parse_sae_sources(model_params, hook_points))
    except SAESourceError:  # check_sae_sources reports it
        return set()


def check_sae_sources(
    namespace: str, model: ModelHandle, model_params: dict, hook_points: list[str]
) -> list[str]:
    """One line per `sae_source` entry that cannot run on the model, before any capture: a
    hook name we cannot serve or not configured, a block the model lacks, d_in != d_model.
    Reads configs only: the model's, the SAE's cfg.json (a registry entry's through
    SAELens, from the local HF cache)."""
    from sae_reasoning.models.hooks import HookPointError, canonical_hook_point
    from sae_reasoning.sae.pretrained import (
        SAESourceError,
        check_fits,
        parse_sae_sources,
        source_config,
    )

    try:
        sources = parse_sae_sources(model_params, hook_points, namespace)
    except SAESourceError as exc:
        return [str(exc)]
    if not sources:
        return []
    try:
        config = model.config()
    except ModelLoadError as exc:
        return [f"cannot check models.{namespace}.sae_source: {exc}"]
    d_model = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    n_layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))
    lines = []
    for hook, source in sources.items():
        where = (
            f"model {namespace!r} ({model.spec.pretrained_model_name_or_path}), {hook}, "
            f"sae_source {source.label}"
        )
        try:
            canonical_hook_point(hook, n_layers)
            cfg = source_config(source)
            check_fits(cfg.get("hook_name"), cfg.get("d_in"), hook, d_model, where)
        except (SAESourceError, HookPointError) as exc:
            lines.append(str(exc) if where in str(exc) else f"{where}: {exc}")
    return lines
