import pytest
import torch

from sae_reasoning.causal.attribution import attribution
from sae_reasoning.causal.splice import FeatureAblation, condition, spliced
from sae_reasoning.sae import SAEConfig, build_sae
from sae_reasoning.scoring import encode_prompts, score_conditions
from tests.prompts_fixture import tiny_prompts
from tests.tiny import D_MODEL, FAMILIES

LAYER = 1


def random_sae(d_in=D_MODEL, d_sae=4 * D_MODEL, seed=0):
    g = torch.Generator().manual_seed(seed)
    sae = build_sae(
        SAEConfig(
            d_in=d_in, d_sae=d_sae, hook_name=f"blocks.{LAYER}.hook_resid_post", hook_layer=LAYER
        )
    )
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_in**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
    return sae


@pytest.mark.parametrize("family", FAMILIES)
def test_splice_without_ablation_is_identity(tiny_lms, family):
    lm = tiny_lms[family]
    sae = random_sae()
    ids = lm.tokenizer(["Question: What is 3 + 4?\nAnswer: 7"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        clean = lm.model(input_ids=ids).logits
        with spliced(lm.model, LAYER, FeatureAblation(sae, [], "zero")):
            same = lm.model(input_ids=ids).logits
        # Touching every feature changes the output: the splice really is in the model.
        with spliced(lm.model, LAYER, FeatureAblation(sae, torch.arange(sae.cfg.d_sae), "zero")):
            ablated = lm.model(input_ids=ids).logits
    assert (same - clean).abs().max() < 1e-5
    assert (ablated - clean).abs().max() > 1e-3


def test_ablation_modes_replace_only_the_chosen_features():
    sae = random_sae()
    x = torch.randn(2, 5, D_MODEL)
    f = sae.encode(x)
    feat = int(f.reshape(-1, f.shape[-1]).mean(0).argmax())
    out = FeatureAblation(sae, [feat], "zero")(x)
    torch.testing.assert_close(out, x - f[..., feat][..., None] * sae.W_dec[feat])
    # Mean and resample values come from select-split references (tests/causal/test_references.py).
    for mode in ("mean", "resample"):
        with pytest.raises(ValueError, match=f"{mode} ablation needs references"):
            FeatureAblation(sae, [feat], mode)
        with pytest.raises(TypeError, match="must be an AblationReferences"):
            FeatureAblation(sae, [feat], mode, references={"mean": torch.zeros(sae.cfg.d_sae)})
    with pytest.raises(ValueError, match="ablation mode 'half'"):
        FeatureAblation(sae, [feat], "half")


def test_attribution_predicts_small_exact_effects(tiny_lms):
    """Gradient x activation matches the exact effect of a small change of each feature."""
    lm = tiny_lms["llama"]
    sae = random_sae(seed=1)
    encoded = encode_prompts(lm.tokenizer, tiny_prompts(n_open=4, n_choice=0))
    est = attribution(lm, sae, LAYER, encoded, batch_size=4)
    top = torch.argsort(est.abs(), descending=True)[:3].tolist()
    eps = 1e-2

    class Scale(FeatureAblation):
        def replacement(self, f_sel):
            return f_sel * (1 - eps)

    conditions = {f"s{i}": condition(lm.model, LAYER, Scale(sae, [i], "zero")) for i in top}
    scores = score_conditions(lm, encoded, conditions, batch_size=4, progress=None)
    for i in top:
        exact = (scores[f"s{i}"].gold_logprob - scores["clean"].gold_logprob).mean() / eps
        assert exact == pytest.approx(float(est[i]), rel=0.05, abs=1e-4)


def test_mean_ablation_estimate_predicts_small_moves_toward_the_mean(tiny_lms):
    """mean * sum(grad) - sum(grad * f) is the first-order effect of moving f toward the mean."""
    from sae_reasoning.causal.attribution import attribution_terms, estimate

    lm = tiny_lms["llama"]
    sae = random_sae(seed=2)
    encoded = encode_prompts(lm.tokenizer, tiny_prompts(n_open=4, n_choice=0))
    mean = torch.rand(sae.cfg.d_sae)
    est = estimate(attribution_terms(lm, sae, LAYER, encoded, batch_size=4), "mean", {"mean": mean})
    top = torch.argsort(est.abs(), descending=True)[:2].tolist()
    eps = 1e-2

    class TowardMean(FeatureAblation):
        def replacement(self, f_sel):
            return f_sel + eps * (mean[self.features] - f_sel)

    conditions = {f"m{i}": condition(lm.model, LAYER, TowardMean(sae, [i], "zero")) for i in top}
    scores = score_conditions(lm, encoded, conditions, batch_size=4, progress=None)
    for i in top:
        exact = (scores[f"m{i}"].gold_logprob - scores["clean"].gold_logprob).mean() / eps
        assert exact == pytest.approx(float(est[i]), rel=0.05, abs=1e-4)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_attribution_at_all_positions_predicts_small_exact_effects(tiny_lms, mode):
    """positions='all': the estimate sums over few-shot block, question and answer positions
    (the block's gradient gathered over batches), and matches small exact all-position
    moves; the answer-position estimate does not."""
    from sae_reasoning.causal.attribution import attribution_terms, estimate

    lm = tiny_lms["llama"]
    sae = random_sae(seed=1)
    encoded = encode_prompts(
        lm.tokenizer, tiny_prompts(n_open=5, n_choice=3)
    )  # 2 batches on one block
    mean = torch.rand(sae.cfg.d_sae)
    est = estimate(
        attribution_terms(lm, sae, LAYER, encoded, batch_size=2, positions="all"),
        mode,
        {"mean": mean},
    )
    est_answer = estimate(
        attribution_terms(lm, sae, LAYER, encoded, batch_size=2), mode, {"mean": mean}
    )
    top = torch.argsort(est.abs(), descending=True)[:3].tolist()
    eps = 1e-2
    target = mean if mode == "mean" else torch.zeros_like(mean)

    class Toward(FeatureAblation):
        def replacement(self, f_sel):
            return f_sel + eps * (target[self.features] - f_sel)

    conditions = {f"m{i}": condition(lm.model, LAYER, Toward(sae, [i], "zero")) for i in top}
    scores = score_conditions(
        lm, encoded, conditions, batch_size=3, progress=None, start_layer=LAYER, positions="all"
    )
    off = 0.0
    for i in top:
        exact = (scores[f"m{i}"].gold_logprob - scores["clean"].gold_logprob).mean() / eps
        assert exact == pytest.approx(float(est[i]), rel=0.05, abs=1e-4)
        off = max(off, abs(float(est_answer[i]) - exact) / abs(exact))
    assert off > 0.2
