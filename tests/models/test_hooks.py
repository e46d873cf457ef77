import pytest
import torch

from sae_reasoning.models import (
    HookPointError,
    capture_residuals,
    patch_residual,
    transformer_blocks,
)
from sae_reasoning.models.hooks import hook_point, parse_hook_point
from tests.tiny import FAMILIES, N_LAYERS


def _ids(lm, texts):
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_after_block_matches_hidden_states(tiny_lms, family):
    lm = tiny_lms[family]
    ids, mask = _ids(lm, ["Question: What is 3 + 4?\nAnswer: 7"])
    assert len(transformer_blocks(lm.model)) == N_LAYERS
    with torch.no_grad():
        hidden = lm.model(
            input_ids=ids, attention_mask=mask, output_hidden_states=True
        ).hidden_states
    got = capture_residuals(lm.model, ids, mask, [1, 2])
    # hidden_states[L + 1] is the output of block L, except the last one (final norm applied).
    torch.testing.assert_close(got[1], hidden[2])
    torch.testing.assert_close(got[2], hidden[3])


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_stops_after_deepest_requested_block(tiny_lms, family):
    lm = tiny_lms[family]
    ids, mask = _ids(lm, ["yes no true false"])
    ran = []
    blocks = transformer_blocks(lm.model)
    handles = [
        b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(blocks)
    ]
    try:
        capture_residuals(lm.model, ids, mask, [1])
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1]


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_residual_changes_only_inside_the_context(tiny_lms, family):
    lm = tiny_lms[family]
    ids, mask = _ids(lm, ["what is the total"])
    with torch.no_grad():
        clean = lm.model(input_ids=ids, attention_mask=mask).logits
        with patch_residual(lm.model, 1, lambda h: h * 0):
            patched = lm.model(input_ids=ids, attention_mask=mask).logits
        again = lm.model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(clean, patched)
    torch.testing.assert_close(clean, again)


def test_layer_out_of_range_names_model_and_range(tiny_lms):
    lm = tiny_lms["llama"]
    ids, mask = _ids(lm, ["yes"])
    with pytest.raises(
        HookPointError, match=r"layer\(s\) \[7\] out of range; the model has 4 blocks"
    ):
        capture_residuals(lm.model, ids, mask, [7])


def test_hook_point_names_round_trip():
    assert hook_point(15) == "blocks.15.hook_resid_post"
    assert parse_hook_point("blocks.15.hook_resid_post") == 15
    with pytest.raises(HookPointError):
        parse_hook_point("blocks.15.hook_mlp_out")
