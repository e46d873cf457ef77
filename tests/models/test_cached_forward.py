import os

import pytest
import torch

from sae_reasoning.models.cached_forward import (
    Context,
    combine,
    cut_above,
    forward,
    select,
    with_room,
)
from sae_reasoning.scoring import pad_right


def test_contexts_share_tensors_and_combine_takes_the_lower_layers(tiny_lms):
    lm = tiny_lms["llama"]
    ids = torch.tensor([[5, 9, 30, 31]])
    with torch.no_grad():
        _, ctx = forward(lm.model, ids, torch.ones_like(ids), keep=True)
    wide = ctx.expand(3)
    # Views: a batch-1 context repeated costs nothing until a pass extends it.
    assert all(
        w.keys.data_ptr() == c.keys.data_ptr() for w, c in zip(wide.cache.layers, ctx.cache.layers)
    )
    q, mask = pad_right([[7, 8], [3], [4, 6]], lm.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        _, a = forward(lm.model, q, mask, wide, keep=True)
        _, b = forward(lm.model, q + 1, mask, wide, keep=True)
    both = combine(a, b, 1)
    assert [
        layer.keys is src.keys
        for layer, src in zip(both.cache.layers, [*a.cache.layers[:2], *b.cache.layers[2:]])
    ] == [True] * len(both.cache.layers)
    # The leaves of cut_above gather the gradient of passes on top; backward through the
    # originals takes it on.
    leafy, originals, leaves = cut_above(a, 1)
    assert len(leaves) == 2 * (len(a.cache.layers) - 2) and all(
        leaf.requires_grad for leaf in leaves
    )
    assert isinstance(leafy, Context) and leafy.cache.layers[0].keys is a.cache.layers[0].keys


def test_decoding_in_place_gives_the_same_logits_as_concatenating(tiny_lms):
    """with_room + in_place (greedy decoding) writes into reserved room instead of copying
    the cache per step: same logits bit for bit, and the room is enforced."""
    lm = tiny_lms["llama"]
    q, mask = pad_right([[5, 9, 30, 31], [7, 8]], lm.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        _, ctx = forward(lm.model, q, mask, keep=True)
        room = with_room(ctx, 3)
        grown, copied = room, ctx
        for step in ([[11], [12]], [[13], [14]], [[15], [16]]):
            nxt = torch.tensor(step)
            a, copied = forward(lm.model, nxt, torch.ones_like(nxt), copied, keep=True)
            b, grown = forward(lm.model, nxt, torch.ones_like(nxt), grown, in_place=True)
            assert torch.equal(a.logits, b.logits)
        assert torch.equal(copied.mask, grown.mask) and torch.equal(copied.length, grown.length)
        # the reserved buffer was written, not reallocated
        assert grown.cache.layers[0].keys.data_ptr() == room.cache.layers[0].keys.data_ptr()
        with pytest.raises(RuntimeError, match="room"):
            forward(lm.model, nxt, torch.ones_like(nxt), grown, in_place=True)


def test_rows_with_room_serve_many_passes_unchanged(tiny_lms):
    """select(..., room): keep=False passes (one per condition) write into reserved room and
    leave the context as they found it: the same logits as on a plain copy, pass after pass,
    and a pass that fails midway leaves it intact too."""
    lm = tiny_lms["llama"]
    q, mask = pad_right([[5, 9, 30, 31], [7, 8]], lm.tokenizer.pad_token_id, "cpu")
    rows = torch.tensor([0, 0, 1])
    ans, amask = pad_right([[31, 4, 5], [31, 6], [8, 9, 10]], lm.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        _, ctx = forward(lm.model, q, mask, keep=True)
        plain, roomy = select(ctx, rows), select(ctx, rows, room=ans.shape[1])
        before = [layer.keys.clone() for layer in roomy.cache.layers]
        for _ in range(3):
            a, _ = forward(lm.model, ans, amask, plain)
            b, _ = forward(lm.model, ans, amask, roomy)
            assert torch.equal(a.logits, b.logits)
        assert all(
            torch.equal(layer.keys, k) for layer, k in zip(roomy.cache.layers, before, strict=True)
        )

        def fail(*_):
            raise ValueError("hook failed")

        handle = lm.model.model.layers[1].register_forward_hook(fail)
        try:
            with pytest.raises(ValueError, match="hook failed"):
                forward(lm.model, ans, amask, roomy)
        finally:
            handle.remove()
        b, _ = forward(lm.model, ans, amask, roomy)  # room intact after the failure
        assert torch.equal(a.logits, b.logits)


@pytest.mark.parametrize("room", [0, 3])
def test_select_copies_is_the_rows_repeated(tiny_lms, room):
    """select(rows, copies=K) holds the same keys, values, mask and lengths as select of the
    rows repeated K times (the buffer is written once per copy), and passes on it agree."""
    lm = tiny_lms["llama"]
    q, mask = pad_right([[5, 9, 30, 31], [7, 8]], lm.tokenizer.pad_token_id, "cpu")
    rows = torch.tensor([0, 0, 1])
    ans, amask = pad_right([[31, 4, 5], [31, 6], [8, 9, 10]], lm.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        _, ctx = forward(lm.model, q, mask, keep=True)
        copied = select(ctx, rows, room, from_layer=1, copies=3)
        repeated = select(ctx, rows.repeat(3), room, from_layer=1)
        assert torch.equal(copied.mask, repeated.mask)
        assert torch.equal(copied.length, repeated.length)
        for a, b in zip(copied.cache.layers, repeated.cache.layers, strict=True):
            assert a.keys.shape == b.keys.shape and a.values.shape == b.values.shape
        for a, b in zip(copied.cache.layers[1:], repeated.cache.layers[1:], strict=True):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        full = select(ctx, rows.repeat(3), room)
        x, _ = forward(
            lm.model, ans.repeat(3, 1), amask.repeat(3, 1), select(ctx, rows, room, copies=3)
        )
        y, _ = forward(lm.model, ans.repeat(3, 1), amask.repeat(3, 1), full)
        assert torch.equal(x.logits, y.logits)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_grouped_attention_in_sdpa_changes_no_bit(tiny_lms, family, monkeypatch):
    """Loading on the CPU lets SDPA read grouped key/value heads in place (no repeat_kv copy):
    padded passes on a cached context give the same logits bit for bit as transformers'
    copying path, and SDPA really is called with enable_gqa."""
    from sae_reasoning.models.loading import SDPA_GQA_SWITCH

    lm = tiny_lms[family]
    cfg = lm.model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # the tiny model groups its heads
    assert os.environ.get(SDPA_GQA_SWITCH) == "1"  # set when tiny_lms loaded on the CPU
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("enable_gqa", False))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    q, mask = pad_right([[5, 9, 30, 31], [7, 8]], lm.tokenizer.pad_token_id, "cpu")
    ans, amask = pad_right([[31, 4, 5], [31, 6], [8, 9, 10]], lm.tokenizer.pad_token_id, "cpu")
    logits = {}
    for switch in ("0", "1"):
        monkeypatch.setenv(SDPA_GQA_SWITCH, switch)
        calls.clear()
        with torch.no_grad():
            _, ctx = forward(lm.model, q, mask, keep=True)
            out, _ = forward(lm.model, ans, amask, select(ctx, torch.tensor([0, 0, 1])))
        logits[switch] = out.logits
        assert calls and set(calls) == {switch == "1"}
    assert torch.equal(logits["0"], logits["1"])
