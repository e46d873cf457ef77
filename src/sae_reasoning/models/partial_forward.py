"""Forward passes that start at a layer from a residual stream already computed.

An intervention at block L's output cannot change blocks 0..L, so once the clean pass
has recorded the residual after block L, every ablation only needs blocks L+1..N. Here
blocks 0..L return at once (block L returns the recorded residual) while the model's own
forward still builds the position ids, rotary tables and attention masks of its family,
so nothing about GPT-2, GPT-NeoX, Gemma, Phi or Llama has to be re-implemented.

Forward hooks on block L (e.g. an SAE splice from models.hooks.patch_residual) still
apply to the injected residual. Skipped blocks leave their KV-cache layers untouched,
which is what cached_forward.forward restores after a pass anyway (keep=False).

`forward_above` also keeps the cache: a context (few-shot block, questions) rebuilt with an
intervention at block L's output acting at every position, from the clean residual
recorded when the clean context was built. Blocks 0..L see nothing of the intervention,
so their keys and values are the clean context's; only the blocks above run.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from sae_reasoning.models.cached_forward import Context, combine, forward
from sae_reasoning.models.hooks import check_layers, transformer_blocks


@contextmanager
def start_at(model: torch.nn.Module, layer: int, resid: torch.Tensor):
    """Within the block, a forward pass uses `resid` as block `layer`'s output and runs
    only the blocks above it. `resid` must have the shape of that output [B, S, d_model]."""
    check_layers(model, [layer])
    blocks = transformer_blocks(model)

    def skip(hidden_states, *args, **kwargs):
        return hidden_states

    def inject(hidden_states, *args, **kwargs):
        if hidden_states.shape != resid.shape:
            raise ValueError(
                f"start_at: recorded residual has shape {tuple(resid.shape)}, "
                f"this pass has {tuple(hidden_states.shape)}"
            )
        return resid.to(hidden_states.dtype)

    for i in range(layer + 1):
        blocks[i].forward = inject if i == layer else skip  # instance attribute shadows the method
    try:
        yield
    finally:
        for i in range(layer + 1):
            del blocks[i].forward


def forward_above(
    model: torch.nn.Module,
    layer: int,
    resid: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    context: Context | None,
    clean: Context,
) -> Context:
    """The context after `input_ids`, computed from block `layer`'s output `resid` up.

    `context`: the context before these tokens (its layers 0..`layer` clean, e.g. from an
    earlier forward_above); `clean`: the clean context after them, whose layers 0..`layer`
    the result shares. Hooks on block `layer` installed by the caller (the intervention)
    act on `resid`. Grad mode is the caller's: under torch.enable_grad the returned keys
    and values of the blocks above carry the graph back to the hooks' tensors.
    """
    with start_at(model, layer, resid):
        _, upper = forward(model, input_ids, attention_mask, context, keep=True, logits=False)
    return combine(clean, upper, layer)
