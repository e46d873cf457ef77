"""Forward passes that continue from a cached context (KV cache).

Every benchmark prompt starts with the same few-shot block, and an ablation at the answer
positions cannot change anything that comes before them (attention is causal). So the
shared block is run once per benchmark, each question once, and later passes run only
the new tokens on top of the cached keys and values. Rows are right-padded; the mask
carries the holes and position ids are explicit, so padding never changes a real token.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class Context:
    """A batch's cached keys/values, which of its slots are real tokens, and where each row ends."""

    cache: DynamicCache
    mask: torch.Tensor      # [B, T] 1 for real tokens
    length: torch.Tensor    # [B] number of real tokens (next position id)

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    def expand(self, batch_size: int) -> "Context":
        """A batch-1 context repeated for `batch_size` rows (views, no copy until extended)."""
        if self.batch_size != 1:
            raise ValueError("only a batch-1 context can be expanded")
        cache = DynamicCache()
        for layer in self.cache.layers:
            cache.update(layer.keys.expand(batch_size, *layer.keys.shape[1:]),
                         layer.values.expand(batch_size, *layer.values.shape[1:]),
                         len(cache.layers))
        return Context(cache, self.mask.expand(batch_size, -1), self.length.expand(batch_size))


def _cache_kwarg(model) -> str:
    # transformers 5.2x renames `past_key_values` to `cache`; accept both generations.
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _snapshot(cache: DynamicCache):
    return [(layer.keys, layer.values) for layer in cache.layers]


def _restore(cache: DynamicCache, snap) -> None:
    # Cache updates concatenate into new tensors, so the old ones are intact: put them back.
    for layer, (k, v) in zip(cache.layers, snap):
        layer.keys, layer.values = k, v


def forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    context: Context | None = None,
    *,
    keep: bool = False,
    logits: bool = True,
):
    """Run right-padded `input_ids` after `context`.

    Returns (model output or None if a hook stopped the pass early, new Context if `keep`).
    With keep=False the context is left exactly as it was, so it can serve many passes.
    """
    from sae_reasoning.models.hooks import _StopForward

    attention_mask = attention_mask.to(input_ids.device)
    start = context.length if context is not None else torch.zeros(
        input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    position_ids = start[:, None].to(input_ids.device) + torch.arange(input_ids.shape[1], device=input_ids.device)
    if context is not None:
        cache, full_mask = context.cache, torch.cat([context.mask.to(attention_mask), attention_mask], 1)
        snap = _snapshot(cache)
    else:
        cache, full_mask, snap = (DynamicCache() if keep else None), attention_mask, None
    kwargs = {} if logits else {"logits_to_keep": 1}
    out = None
    try:
        kwargs[_cache_kwarg(model)] = cache
        out = model(input_ids=input_ids, attention_mask=full_mask, position_ids=position_ids,
                    use_cache=keep or context is not None, **kwargs)
    except _StopForward:
        pass
    new_context = None
    if keep:
        if out is None:
            raise RuntimeError("cannot keep the cache of a pass that stopped early")
        new_context = Context(cache, full_mask, start + attention_mask.sum(1))
        if snap is not None:
            # The extended cache is returned; the caller's context must stay untouched.
            new_cache = DynamicCache()
            for i, layer in enumerate(cache.layers):
                new_cache.update(layer.keys, layer.values, i)
            new_context.cache = new_cache
            _restore(cache, snap)
    elif snap is not None:
        _restore(cache, snap)
    return out, new_context


def select(context: Context, rows: torch.Tensor) -> Context:
    """The context of the given rows (e.g. one row per answer choice)."""
    cache = DynamicCache()
    for i, layer in enumerate(context.cache.layers):
        cache.update(layer.keys[rows], layer.values[rows], i)
    return Context(cache, context.mask[rows], context.length[rows])
