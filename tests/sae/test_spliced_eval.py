"""Spliced evals on a real tiny Llama-family model: perfect / zero SAEs give the extremes,
and the clean cross-entropy is the model's own loss."""

import pytest
import torch
import torch.nn.functional as F

from sae_reasoning.models.hooks import patch_residual
from sae_reasoning.sae import SAEConfig, build_sae
from sae_reasoning.sae.spliced_eval import heldout_texts, spliced_eval
from tests.prompts_fixture import tiny_prompts

HOOK = "blocks.1.hook_resid_post"


def identity_sae(d):
    """f = relu([x, -x]), x_hat = f @ [I; -I] = x exactly."""
    sae = build_sae(SAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


@pytest.fixture(scope="module")
def lm(tiny_lms):
    return tiny_lms["llama"]


@pytest.fixture(scope="module")
def texts():
    return heldout_texts(tiny_prompts(n_open=8, n_choice=4), eval_every=2, n=5)


def test_perfect_sae_recovers_everything_zero_sae_nothing(lm, texts):
    perfect = spliced_eval(lm, identity_sae(lm.d_model), HOOK, texts, batch_size=2)
    assert perfect["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert perfect["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-5)
    assert perfect["kl_div_with_ablation"] > 0.01 and perfect["kl_div_score"] == pytest.approx(1.0)
    zero = build_sae(SAEConfig(d_in=lm.d_model, d_sae=8))  # all-zero weights: x_hat = 0
    z = spliced_eval(lm, zero, HOOK, texts, batch_size=2)
    assert z["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)
    assert z["kl_div_with_sae"] == pytest.approx(z["kl_div_with_ablation"])
    assert z["positions_left_clean"] == len(texts)  # position 0 of each prompt
    assert z["n_prompts"] == 5 and z["ce_loss_recovered"] == z["ce_loss_score"]


def test_clean_ce_is_the_models_own_loss(lm, texts):
    ids = lm.tokenizer(texts[0], return_tensors="pt")["input_ids"]
    expected = lm.model(input_ids=ids, labels=ids).loss.item()
    got = spliced_eval(lm, identity_sae(lm.d_model), HOOK, texts[:1])
    assert got["ce_loss_without_sae"] == pytest.approx(expected, rel=1e-5)
    assert got["n_predicted_tokens"] == ids.shape[1] - 1


def test_heldout_texts_follow_the_trainer_split():
    prompts = tiny_prompts(n_open=8, n_choice=4)
    texts = heldout_texts(prompts, eval_every=3, n=100)
    assert texts == [prompts["prompt"][i] + prompts["target"][i] for i in (0, 3, 6, 9)]
    assert len(heldout_texts(prompts, eval_every=None, n=5)) == 5


def test_width_mismatch_is_a_clear_error(lm, texts):
    with pytest.raises(ValueError, match="d_in=7.*d_model=64"):
        spliced_eval(lm, build_sae(SAEConfig(d_in=7, d_sae=8)), HOOK, texts)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "gemma", "phi", "llama"])
def test_spliced_passes_from_the_recorded_residual_equal_full_passes(tiny_lms, texts, family):
    """The spliced and ablated passes start above the hook from the clean pass's residual:
    the CE and KL they give are the model's own with the splice hooked into a full pass."""
    lm = tiny_lms[family]
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(d_in=lm.d_model, d_sae=16))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 1.0)
    ids = lm.tokenizer(texts[0], return_tensors="pt")["input_ids"]

    def spliced(x):  # position 0 stays clean, as spliced_eval leaves it
        out = sae(x)
        out[:, 0] = x[:, 0]
        return out

    def ablated(x):
        return torch.cat([x[:, :1], torch.zeros_like(x[:, 1:])], 1)

    def log_probs(**out):  # next-token log-probs of every predicted position
        return torch.log_softmax(out["logits"][0, :-1].float(), -1)

    expected, kl = {}, {}
    with torch.no_grad():
        clean = log_probs(**lm.model(input_ids=ids))
        for name, fn in (("sae", spliced), ("ablation", ablated)):
            with patch_residual(lm.model, 1, fn):
                out = lm.model(input_ids=ids, labels=ids)
            expected[name] = out.loss.item()
            # KL(p_clean || p_spliced) per position, by torch's own kl_div, then the mean
            kl[name] = F.kl_div(log_probs(**out), clean, log_target=True, reduction="none")
            kl[name] = kl[name].sum(-1).mean().item()
    got = spliced_eval(lm, sae, HOOK, texts[:1])
    assert got["ce_loss_with_sae"] == pytest.approx(expected["sae"], rel=1e-6)
    assert got["ce_loss_with_ablation"] == pytest.approx(expected["ablation"], rel=1e-6)
    assert got["kl_div_with_sae"] == pytest.approx(kl["sae"], rel=1e-5)
    assert got["kl_div_with_ablation"] == pytest.approx(kl["ablation"], rel=1e-5)
    assert abs(got["ce_loss_with_ablation"] - got["ce_loss_without_sae"]) > 1e-3
