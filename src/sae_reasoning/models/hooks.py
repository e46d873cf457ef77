"""Residual-stream hook points by layer index, for every decoder family we support.

Hook point names follow TransformerLens/SAELens: `blocks.{L}.hook_resid_post` is the
residual stream after transformer block L (0-based), i.e. the output of that block.
`blocks.{L}.hook_resid_pre` (what many published SAEs carry) is the input of block L, the
same tensor as `blocks.{L-1}.hook_resid_post`; `canonical_hook_point` maps it there, so
capture, splices and SAE folders use one name per tensor. `blocks.0.hook_resid_pre` (the
embedding output) and non-residual hooks (hook_resid_mid, hook_mlp_out, attn.hook_z, ...)
are not served: they get a HookPointError naming the hook.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn

# Where each family keeps its list of blocks (HF attribute paths).
BLOCK_PATHS = (
    "model.layers",  # Llama, Gemma, Phi, Qwen, Mistral, SmolLM
    "transformer.h",  # GPT-2, GPT-J
    "gpt_neox.layers",  # GPT-NeoX / Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)

_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


class HookPointError(ValueError):
    """A requested hook point does not exist in the model."""


def hook_point(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def parse_hook_point(name: str) -> int:
    """The block whose output the hook point is (resid_pre of block L -> L - 1)."""
    m = _HOOK_RE.match(str(name))
    if not m:
        raise HookPointError(
            f"hook point {name!r}: expected 'blocks.<layer>.hook_resid_post' or "
            "'blocks.<layer>.hook_resid_pre' (residual stream)"
        )
    layer = int(m.group(1))
    if m.group(2) == "post":
        return layer
    if layer == 0:
        raise HookPointError(
            f"hook point {name!r} is the embedding output (input of block 0); "
            "only block inputs/outputs from blocks.1.hook_resid_pre on are served"
        )
    return layer - 1


def canonical_hook_point(name: str, n_layers: int | None = None) -> str:
    """The project's name for a residual hook point: blocks.8.hook_resid_pre ->
    blocks.7.hook_resid_post. With `n_layers`, the block must exist in the model."""
    layer = parse_hook_point(name)
    if n_layers is not None and not 0 <= layer < n_layers:
        raise HookPointError(
            f"hook point {name!r} is the output of block {layer}; the model has "
            f"{n_layers} blocks (0..{n_layers - 1})"
        )
    return hook_point(layer)


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks, whatever its family."""
    for path in BLOCK_PATHS:
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(candidates) == 1:
        return candidates[0]
    raise HookPointError(f"cannot find the transformer blocks of {type(model).__name__}")


def check_layers(model: nn.Module, layers: Iterable[int], model_name: str = "model") -> list[int]:
    n = len(transformer_blocks(model))
    layers = sorted(set(int(x) for x in layers))
    bad = [x for x in layers if not 0 <= x < n]
    if bad:
        raise HookPointError(
            f"{model_name}: layer(s) {bad} out of range; the model has {n} blocks (0..{n - 1})"
        )
    return layers


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class _StopForward(Exception):
    pass


@contextmanager
def recording(model: nn.Module, layers: Iterable[int], *, stop: bool = True):
    """Record the residual stream after each requested block into the yielded dict.

    With stop=True the forward pass is cut right after the deepest requested block (the
    caller catches `_StopForward`, as `capture_residuals` and cached_forward.forward do):
    no compute is spent on layers nobody reads, nor on the unembedding.
    """
    layers = check_layers(model, layers)
    blocks = transformer_blocks(model)
    out: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def make_hook(layer):
        def hook(_module, _inputs, output):
            out[layer] = _hidden(output)
            if stop and layer == deepest:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture_residuals(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layers: Iterable[int],
) -> dict[int, torch.Tensor]:
    """Residual stream after each requested block, from one forward pass that stops early."""
    with recording(model, layers) as out:
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    return out


@contextmanager
def patch_residual(model: nn.Module, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Within the block, replace the residual stream after `layer` by fn(resid)."""
    check_layers(model, [layer])
    block = transformer_blocks(model)[layer]

    def hook(_module, _inputs, output):
        return _replace_hidden(output, fn(_hidden(output)))

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def keep_clean(model: nn.Module, layer: int, clean: torch.Tensor, rows: torch.Tensor):
    """Within the block, block `layer`'s output at `rows` ([B, S] bool) is `clean` ([B, S, d]).

    Installed after an intervention's hook on the same block (hooks run in the order they
    were registered), it exempts those positions from the intervention."""
    check_layers(model, [layer])
    block = transformer_blocks(model)[layer]
    rows = rows.to(clean.device)[..., None]

    def hook(_module, _inputs, output):
        hidden = _hidden(output)
        return _replace_hidden(output, torch.where(rows, clean.to(hidden), hidden))

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
