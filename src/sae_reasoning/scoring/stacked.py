"""Several conditions' answer passes run as one ("stacking").

An answer pass runs only the answer rows (R rows of S tokens: tens of tokens), so its
matmuls are too small to keep the accelerator busy and per-op overhead dominates. With
start_layer and positions="answer", conditions that act at block start_layer's output
differ only in the function applied there, so K of them run as one pass: the R rows
K times over end to end along the sequence (R rows of K*S tokens), the clean residual
injected K times, one hook applying condition k's function to columns k*S:(k+1)*S. A
4D mask lets each copy see the rows' cached context and its own tokens only, and the
position ids restart per copy (AnswerBatch.run(stack=K, packed=True)), so one copy of the
context (the layers above start_layer: the pass never reads the others) serves all K;
attention reads it once, not K times (benchmarks/packed_stacking.py: 0.91x the time of K*R
rows on K copies).
Each condition's logits are its own pass's up to float rounding (other matmul shapes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sae_reasoning.models.hooks import patch_residual
from sae_reasoning.models.partial_forward import start_at
from sae_reasoning.scoring.encode_memo import shared_encodes
from sae_reasoning.scoring.passes import AnswerBatch, Condition

# The stacked pass's logits (float32, as scoring reads them) stay under this, whatever the
# vocabulary: a 256k-token vocabulary makes 1 MiB per answer token.
LOGITS_BYTES = 512 * 2**20
# ... and K times the rows' cached context (the layers above start_layer; a long few-shot
# block on a large model makes tens of MB per row): the bound the attention mask and the
# room of K*S tokens beside the one copy stay well within.
CONTEXT_BYTES = 1024 * 2**20


def stackable(cond: Condition, layer: int | None) -> bool:
    """Whether `cond` may share an answer pass starting above block `layer`: it exposes the
    function it installs (`hook`, causal.splice.condition) and acts at that block."""
    return (
        layer is not None
        and callable(getattr(cond, "hook", None))
        and getattr(cond, "layer", None) == layer
    )


def stack_size(stack_tokens: int, batch: AnswerBatch, vocab: int, layer: int) -> int:
    """Conditions per answer pass of `batch`: about `stack_tokens` answer tokens a pass,
    within LOGITS_BYTES of logits (`vocab`: the logits' last dim) and CONTEXT_BYTES of
    copied context above block `layer`; at least 1."""
    tokens = batch.ids.numel()  # R * S
    k = min(stack_tokens // tokens, LOGITS_BYTES // (4 * tokens * vocab))
    per_copy = context_bytes(batch, layer + 1)
    if per_copy:
        k = min(k, CONTEXT_BYTES // per_copy)
    return max(1, k)


def context_bytes(batch: AnswerBatch, from_layer: int) -> int:
    """Bytes of one copy of the answer rows' cached context, layers `from_layer` up, with
    room for the answer tokens (what AnswerBatch.run copies per stacked condition)."""
    if batch.context is None:
        return 0
    room, total = batch.ids.shape[1], 0
    for lay in batch.context.cache.layers[from_layer:]:
        k, v = lay.keys, lay.values
        width = (k.shape[1] * k.shape[3] + v.shape[1] * v.shape[3]) * k.element_size()
        total += width * (k.shape[2] + room)
    return total * len(batch.pair_example)


def stacked_logits(
    model,
    layer: int,
    batch: AnswerBatch,
    resid: torch.Tensor,
    hooks: list[Callable[[torch.Tensor], torch.Tensor]],
) -> list[torch.Tensor]:
    """The answer rows' logits [R, S, V] under each of `hooks` (resid -> resid functions at
    block `layer`'s output), from one pass that starts from `resid` [R, S, d_model], the
    clean residual there."""
    k, width = len(hooks), resid.shape[1]

    def apply(out: torch.Tensor) -> torch.Tensor:
        # Each hook sees the batch's R rows, shaped as in an unstacked pass (mean and
        # resample references are aligned with them): the clean residual, the same in each
        # of the K copies, so every hook gets the one tensor and its SAE encode is shared.
        x, version, outs = out[:, :width], out._version, []
        for h in hooks:
            outs.append(h(x))
            if out._version != version:
                raise RuntimeError(
                    f"stacked hook {h!r} changed its input in place: the conditions sharing "
                    "the pass start from that tensor (return a new one, or stack_tokens: 0)"
                )
        return torch.cat(outs, 1)

    with (
        start_at(model, layer, resid.repeat(1, k, 1)),
        patch_residual(model, layer, apply),
        shared_encodes(),
        torch.no_grad(),
    ):
        logits = batch.run(model, stack=k, from_layer=layer + 1, packed=True)
    return list(logits.split(width, dim=1))
