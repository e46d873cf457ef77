"""Forward passes that continue from a cached context (KV cache).

Every benchmark prompt starts with the same few-shot block, and an ablation at the answer
positions cannot change anything that comes before them (attention is causal). So the
shared block is run once per benchmark, each question once, and later passes run only
the new tokens on top of the cached keys and values. Rows are right-padded; the mask
carries the holes and position ids are explicit, so padding never changes a real token.

An intervention at block L's output (at every position) leaves the keys and values of
blocks 0..L as they were: a context rebuilt under it (partial_forward.forward_above) takes
those layers from the clean context and recomputes only the layers above (`combine`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from sae_reasoning.models.hooks import _StopForward


@dataclass
class Context:
    """A batch's cached keys/values, which of its slots are real tokens, and where each row ends."""

    cache: DynamicCache
    mask: torch.Tensor  # [B, T] 1 for real tokens
    length: torch.Tensor  # [B] number of real tokens (next position id)

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    def expand(self, batch_size: int) -> Context:
        """A batch-1 context repeated for `batch_size` rows (views, no copy until extended)."""
        if self.batch_size != 1:
            raise ValueError("only a batch-1 context can be expanded")
        cache = _cache(
            (
                layer.keys.expand(batch_size, *layer.keys.shape[1:]),
                layer.values.expand(batch_size, *layer.values.shape[1:]),
            )
            for layer in self.cache.layers
        )
        return Context(cache, self.mask.expand(batch_size, -1), self.length.expand(batch_size))


def _cache(pairs) -> DynamicCache:
    """A cache holding exactly these (keys, values) tensors, views included: DynamicCache.update
    would concatenate each onto an empty tensor, i.e. copy it."""
    cache = DynamicCache()
    for i, (k, v) in enumerate(pairs):
        cache.update(k[..., :0, :], v[..., :0, :], i)  # creates and initialises layer i, empty
        cache.layers[i].keys, cache.layers[i].values = k, v
    return cache


class _RoomyLayer(DynamicLayer):
    """A cache layer over a buffer with room beyond its `length` tokens: update writes the new
    tokens there in place.

    DynamicLayer.update concatenates, i.e. copies the whole cache at every pass. Attention sees
    views of the same values (keys[:, :, :n]), so its results do not change.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self._keys, self._values = keys, values
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]
        self.device, self.is_initialized = keys.device, True

    @classmethod
    def around(
        cls, keys: torch.Tensor, values: torch.Tensor, room: int, copies: int = 1
    ) -> _RoomyLayer:
        """A copy of (keys, values), `copies` times over along the batch, with room for
        `room` more tokens: one write of each copy, straight into its buffer."""
        b, h, t, d = keys.shape
        k = keys.new_empty((copies * b, h, t + room, d))
        v = values.new_empty((copies * b, h, t + room, values.shape[-1]))  # widths may differ
        kv, vv = k.view(copies, b, *k.shape[1:]), v.view(copies, b, *v.shape[1:])
        kv[:, :, :, :t], vv[:, :, :, :t] = keys, values
        return cls(k, v, t)

    def update(self, key_states, value_states, *args, **kwargs):
        t = self.keys.shape[-2]
        n = t + key_states.shape[-2]
        if n > self._keys.shape[-2]:
            raise RuntimeError(f"cache room exhausted: {n} > {self._keys.shape[-2]} tokens")
        self._keys[:, :, t:n], self._values[:, :, t:n] = key_states, value_states
        self.keys, self.values = self._keys[:, :, :n], self._values[:, :, :n]
        return self.keys, self.values


def _roomy(layers: list[_RoomyLayer]) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = layers
    return cache


def with_room(context: Context, room: int) -> Context:
    """A copy of `context` that forward(..., in_place=True) extends by up to `room` tokens
    without copying the cache at every pass (greedy decoding): select of every row."""
    return select(context, slice(None), room)


def room_left(context: Context | None) -> int:
    """How many more tokens in-place passes can write into `context` (0: none, a plain cache)."""
    layers = context.cache.layers if context is not None else []
    if not layers or not all(isinstance(lay, _RoomyLayer) for lay in layers):
        return 0
    return min(lay._keys.shape[-2] - lay.keys.shape[-2] for lay in layers)


def keep_rows(context: Context, rows: torch.Tensor) -> Context:
    """Those rows of a context from with_room, with the room they have left (a copy)."""
    layers = [
        _RoomyLayer(lay._keys[rows], lay._values[rows], lay.keys.shape[-2])
        for lay in context.cache.layers
    ]
    return Context(_roomy(layers), context.mask[rows], context.length[rows])


def take_written(context: Context, rows: torch.Tensor | None, kept: torch.Tensor) -> Context:
    """A roomy `context` (select with room) after a keep=False pass wrote kept.shape[1]
    tokens into its room: the context of `rows` of it (None: every row, the same buffers, no
    copy) with those tokens where `kept` is 1 (holes where 0), and the room after them."""
    n = kept.shape[1]
    layers = [
        _RoomyLayer(
            lay._keys if rows is None else lay._keys[rows],
            lay._values if rows is None else lay._values[rows],
            lay.keys.shape[-2] + n,
        )
        for lay in context.cache.layers
    ]
    at = slice(None) if rows is None else rows
    mask = torch.cat([context.mask[at], kept.to(context.mask)], 1)
    return Context(_roomy(layers), mask, context.length[at] + kept.sum(1).to(context.length))


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
    in_place: bool = False,
    copies: int = 1,
):
    """Run right-padded `input_ids` after `context`.

    Returns (model output or None if a hook stopped the pass early, new Context if `keep`).
    With keep=False the context is left exactly as it was, so it can serve many passes.
    in_place (a context from with_room; implies keep): the context's cache is extended
    in place and shared by the returned context, so the passed one must not be reused.
    copies > 1 (on a context, keep=False): the rows `copies` times over, end to end along
    the sequence, each copy seeing the context and its own tokens only (packed_mask): one
    copy of the context serves them all; logits [B, copies * S, V].
    """
    if copies > 1 and (context is None or keep or in_place):
        raise ValueError("packed copies run on a context and keep nothing (keep=False)")
    keep = keep or in_place
    attention_mask = attention_mask.to(input_ids.device)
    start = (
        context.length
        if context is not None
        else torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    )
    position_ids = start[:, None].to(input_ids.device) + torch.arange(
        input_ids.shape[1], device=input_ids.device
    )
    if context is not None:
        cache, full_mask = (
            context.cache,
            torch.cat([context.mask.to(attention_mask), attention_mask], 1),
        )
        snap = None if in_place else _snapshot(cache)
    else:
        cache, full_mask, snap = (DynamicCache() if keep else None), attention_mask, None
    if copies > 1:
        full_mask, position_ids = packed_mask(context, attention_mask, copies)
        input_ids = input_ids.repeat(1, copies)
    kwargs = {} if logits else {"logits_to_keep": 1}
    out = None
    try:
        kwargs[_cache_kwarg(model)] = cache
        out = model(
            input_ids=input_ids,
            attention_mask=full_mask,
            position_ids=position_ids,
            use_cache=keep or context is not None,
            **kwargs,
        )
    except _StopForward:
        pass
    except BaseException:
        if snap is not None:  # a failed pass leaves the context as it found it
            _restore(cache, snap)
        raise
    new_context = None
    if keep:
        if out is None:
            raise RuntimeError("cannot keep the cache of a pass that stopped early")
        new_context = Context(cache, full_mask, start + attention_mask.sum(1))
        if snap is not None:
            # The extended cache is returned; the caller's context must stay untouched.
            new_context.cache = _cache((layer.keys, layer.values) for layer in cache.layers)
            _restore(cache, snap)
    elif snap is not None:
        _restore(cache, snap)
    return out, new_context


def packed_mask(
    context: Context, mask: torch.Tensor, copies: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention mask [B, 1, copies * S, T + copies * S] bool, position ids [B, copies * S])
    for `copies` copies of right-padded rows (`mask` [B, S]) laid end to end after `context`
    (T tokens): each copy sees the context and, causally, its own copy's tokens; positions
    restart at the context's length in every copy. transformers takes a 4D mask as given."""
    rows, s = mask.shape
    dev = mask.device
    q = torch.arange(copies * s, device=dev)
    own = (q[:, None] // s == q[None] // s) & (q[None] <= q[:, None])
    new = own[None] & mask.bool().repeat(1, copies)[:, None, :]
    past = context.mask.to(dev).bool()[:, None, :].expand(rows, copies * s, -1)
    positions = context.length[:, None].to(dev) + torch.arange(s, device=dev).repeat(copies)
    return torch.cat([past, new], 2)[:, None], positions


def select(
    context: Context,
    rows: torch.Tensor | slice,
    room: int = 0,
    *,
    from_layer: int = 0,
    copies: int = 1,
) -> Context:
    """The context of the given rows (e.g. one row per answer choice; a slice: those rows as
    views, copied only into the room's buffer); `copies` times over (rows, then the same
    rows again: stacked conditions, scoring/stacked.py).

    room > 0: with room for that many tokens per pass (with_room), so that keep=False passes
    write their keys/values in place instead of copying the whole cache (no-grad passes only:
    an in-place write into a tensor a graph saved would invalidate that graph).
    from_layer: the layers below it get stand-ins of their shape that hold no memory, for
    passes that start above them (partial_forward.start_at) and so never read them."""
    layers = context.cache.layers
    if copies > 1 and not room:  # no buffer to write the copies into: gather them
        rows, copies = torch.as_tensor(rows).repeat(copies), 1
    every = torch.as_tensor(rows).repeat(copies) if copies > 1 else rows
    pairs = [
        (lay.keys[rows], lay.values[rows])
        if i >= from_layer
        else (_stand_in(lay.keys, every, room), _stand_in(lay.values, every, room))
        for i, lay in enumerate(layers)
    ]
    if room:
        cache = _roomy(
            [
                _RoomyLayer.around(k, v, room, copies)
                if i >= from_layer
                else _RoomyLayer(k, v, layers[i].keys.shape[-2])
                for i, (k, v) in enumerate(pairs)
            ]
        )
    else:
        cache = _cache(pairs)
    return Context(cache, context.mask[every], context.length[every])


def head_rows(context: Context, n: int) -> Context:
    """The first `n` rows of `context` (from select), as views: no copy. A roomy context's
    rows keep their room."""
    layers = context.cache.layers
    if all(isinstance(lay, _RoomyLayer) for lay in layers):
        cache = _roomy(
            [_RoomyLayer(lay._keys[:n], lay._values[:n], lay.keys.shape[-2]) for lay in layers]
        )
    else:
        cache = _cache((lay.keys[:n], lay.values[:n]) for lay in layers)
    return Context(cache, context.mask[:n], context.length[:n])


def _stand_in(t: torch.Tensor, rows, room: int) -> torch.Tensor:
    """A zero-strided tensor of the shape `t[rows]` with `room` more tokens: only its shape is
    read (the cache's sequence length)."""
    b = len(range(t.shape[0])[rows]) if isinstance(rows, slice) else len(rows)
    return t.new_zeros(()).expand(b, t.shape[1], t.shape[2] + room, t.shape[3])


def combine(lower: Context, upper: Context, layer: int) -> Context:
    """Cache layers 0..`layer` of `lower`, the layers above of `upper` (same rows and tokens).

    No copy: the new context holds the same tensors."""
    if lower.mask.shape != upper.mask.shape:
        raise ValueError(
            f"combine: contexts of different shapes {tuple(lower.mask.shape)} "
            f"and {tuple(upper.mask.shape)}"
        )
    pairs = zip(lower.cache.layers, upper.cache.layers, strict=True)
    cache = _cache(
        ((lo if i <= layer else up).keys, (lo if i <= layer else up).values)
        for i, (lo, up) in enumerate(pairs)
    )
    return Context(cache, upper.mask, upper.length)


def cut_above(
    context: Context, layer: int
) -> tuple[Context, list[torch.Tensor], list[torch.Tensor]]:
    """The context with the keys/values of the layers above `layer` replaced by leaves.

    Returns (context, originals, leaves). Passes on the new context accumulate the gradient
    of their metrics in the leaves' .grad; torch.autograd.backward(originals, [leaf.grad ...])
    then carries the sum back through the pass that built `context`, once."""
    originals, leaves, pairs = [], [], []
    for i, layer_cache in enumerate(context.cache.layers):
        k, v = layer_cache.keys, layer_cache.values
        if i > layer:
            originals += [k, v]
            k, v = k.detach().requires_grad_(True), v.detach().requires_grad_(True)
            leaves += [k, v]
        pairs.append((k, v))
    return Context(_cache(pairs), context.mask, context.length), originals, leaves
