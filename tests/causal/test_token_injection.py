"""Ground truth for the token-injection control: an SAE on the tiny llama model at layer 1
with two planted features on the same token, " yes":

- TOKEN reads the direction the token itself writes (mean residual at " yes" minus the
  mean residual): it fires on " yes" wherever it stands, so it must be token-driven;
- CONTEXT reads that direction plus the one that separates " yes" after "Answer:" from
  " yes" in plain prose, with a bias that only both together clear: it fires on " yes" in
  the benchmark only, so it must not be token-driven.

The context direction is built from one half of the neutral corpus and the control runs on
the other half, so CONTEXT's label is a prediction, not a fit.
"""

import math

import pytest
import torch

from sae_reasoning.causal.token_injection import (
    NO_CONTEXTS,
    _word_starts,
    neutral_corpus,
    token_injection,
)
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.models.hooks import capture_residuals, hook_point
from sae_reasoning.sae import SAEConfig, build_sae
from tests.prompts_fixture import tiny_prompts

LAYER = 1
TOKEN, CONTEXT, RANDOM, SILENT = 0, 1, 2, 3  # planted features; SILENT never fires
SCALE = 10.0  # encoder gain: activations of order 1


def _residuals(lm, texts):
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
    resid = capture_residuals(lm.model, enc["input_ids"], enc["attention_mask"], [LAYER])[LAYER]
    return enc["input_ids"], enc["attention_mask"].bool(), resid


def _unit(v):
    return v / v.norm()


def _contexts(lm, sae, ids, mask, resid, n=5):
    """What contexts.top_activating_contexts returns (with the optional token_id field)."""
    f = sae.encode(resid).detach()
    f[~mask] = 0
    out = {}
    for feat in range(sae.cfg.d_sae):
        vals, flat = f[..., feat].flatten().topk(n)
        out[feat] = [
            {
                "activation": float(v),
                "token": lm.tokenizer.decode([int(ids.flatten()[i])]),
                "token_id": int(ids.flatten()[i]),
                "text": "",
                "example_index": int(i) // ids.shape[1],
                "position": int(i) % ids.shape[1],
            }
            for v, i in zip(vals, flat)
            if v > 0
        ]
    return out


@pytest.fixture(scope="module")
def planted(tiny_model_dirs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared 2-core box
    lm = ModelHandle(
        ModelSpec("planted", str(tiny_model_dirs["llama"]), converted_cache=None)
    ).load("cpu")
    yes = lm.tokenizer(" yes", add_special_tokens=False)["input_ids"]
    assert len(yes) == 1
    yes = yes[0]
    prompts = tiny_prompts(n_open=10, n_choice=8)
    ids, mask, resid = _residuals(lm, (prompts.prompt + prompts.target).tolist())
    corpus = neutral_corpus()
    build, held_out = corpus[: len(corpus) // 2], corpus[len(corpus) // 2 :]
    # " yes" in plain prose, after the third word: the contrast for the context direction.
    n_ids, n_mask, n_resid = _residuals(
        lm, [" ".join(s.split()[:3] + ["yes"] + s.split()[3:]) for s in build]
    )

    is_yes = mask & (ids == yes)
    token_dir = _unit(resid[is_yes].mean(0) - resid[mask].mean(0))
    context_dir = resid[is_yes].mean(0) - n_resid[n_ids == yes].mean(0)
    context_dir = _unit(context_dir - (context_dir @ token_dir) * token_dir)
    both = token_dir + context_dir

    sae = build_sae(
        SAEConfig(d_in=lm.d_model, d_sae=4, hook_name=hook_point(LAYER), hook_layer=LAYER)
    )
    rival = torch.cat([resid[mask & ~is_yes], n_resid[n_mask & (n_ids == yes)]])
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(4, lm.d_model, generator=torch.Generator().manual_seed(0)))
        for feat, w, others in [(TOKEN, token_dir, resid[mask & ~is_yes]), (CONTEXT, both, rival)]:
            # Bias halfway between the weakest " yes" in the benchmark and the strongest rival.
            cut = ((resid[is_yes] @ w).min() + (others @ w).max()) / 2
            assert (resid[is_yes] @ w).min() > cut > (others @ w).max()
            sae.W_enc[:, feat] = SCALE * w
            sae.b_enc[feat] = -SCALE * cut
        sae.W_enc[:, RANDOM] = (
            torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1)) * SCALE
        )
        sae.W_enc[:, SILENT] = 0
        sae.b_enc[SILENT] = -1.0
    contexts = _contexts(lm, sae, ids, mask, resid)
    assert all(e["token_id"] == yes for f in (TOKEN, CONTEXT) for e in contexts[f])
    assert contexts[SILENT] == []
    yield lm, sae, contexts, held_out
    torch.set_num_threads(threads)


def test_planted_token_feature_is_token_driven_and_context_feature_is_not(planted):
    lm, sae, contexts, held_out = planted
    out = token_injection(lm, sae, LAYER, contexts, corpus=held_out, n_sentences=24)
    tok, ctx = out[TOKEN], out[CONTEXT]
    print({f: {k: v for k, v in r.items() if k != "tokens"} for f, r in out.items()})
    assert tok["tokens"] == ctx["tokens"] == [" yes"]
    assert tok["n_injections"] == ctx["n_injections"] == 24
    assert (
        tok["token_driven"] is True and tok["survival"] > 0.7
    )  # top-5 contexts are the strongest " yes"
    assert ctx["token_driven"] is False and ctx["survival"] < 0.2
    # Without the token the prose barely moves either feature.
    assert tok["neutral_baseline"] < 0.1 * tok["injected_activation"]
    assert ctx["neutral_baseline"] < 0.5 * ctx["benchmark_activation"]


def test_random_feature_is_finite_and_a_silent_feature_has_no_label(planted):
    lm, sae, contexts, held_out = planted
    out = token_injection(lm, sae, LAYER, contexts, corpus=held_out, n_sentences=8, n_tokens=2)
    rnd = out[RANDOM]
    assert 1 <= len(rnd["tokens"]) <= 2 and rnd["n_injections"] == 8 * len(rnd["tokens"])
    assert all(
        math.isfinite(rnd[k])
        for k in ("benchmark_activation", "injected_activation", "neutral_baseline", "survival")
    )
    assert rnd["token_driven"] == (rnd["survival"] >= 0.5)
    silent = out[SILENT]
    assert (
        silent["token_driven"] is None
        and silent["reason"] == NO_CONTEXTS
        and silent["n_injections"] == 0
    )
    assert out[TOKEN]["token_driven"] is True  # every feature gets its own answer in one call


def test_deterministic_batch_invariant_and_token_id_optional(planted):
    lm, sae, contexts, held_out = planted
    feats = {f: contexts[f] for f in (TOKEN, CONTEXT)}
    ref = token_injection(lm, sae, LAYER, feats, corpus=held_out, n_sentences=12, seed=3)
    assert token_injection(lm, sae, LAYER, feats, corpus=held_out, n_sentences=12, seed=3) == ref
    # Batches of 5 pad differently; a feature asked alone gets the same answer; without the
    # stored token_id the decoded token is re-encoded (" yes" round-trips to the same id).
    stripped = {
        f: [{k: v for k, v in e.items() if k != "token_id"} for e in es] for f, es in feats.items()
    }
    for other in (
        token_injection(
            lm, sae, LAYER, stripped, corpus=held_out, n_sentences=12, seed=3, batch_size=5
        ),
        token_injection(
            lm, sae, LAYER, {CONTEXT: feats[CONTEXT]}, corpus=held_out, n_sentences=12, seed=3
        ),
    ):
        for f, r in other.items():
            assert r["tokens"] == ref[f]["tokens"] and r["token_driven"] == ref[f]["token_driven"]
            assert r["survival"] == pytest.approx(ref[f]["survival"], rel=1e-4, abs=1e-6)


def test_neutral_corpus_is_plain_prose_with_slots(planted):
    lm = planted[0]
    corpus = neutral_corpus()
    assert 40 <= len(corpus) <= 60
    assert not any(ch.isdigit() or ch == "?" for s in corpus for ch in s)
    assert not any("answer" in s.lower() for s in corpus)
    for s in corpus[:5]:
        ids, slots = _word_starts(lm.tokenizer, s)
        assert slots and 0 not in slots and all(s_ < len(ids) for s_ in slots)
        # Every slot starts a word: the text before it ends where a space begins.
        for i in slots:
            assert lm.tokenizer.decode(ids[i:]).startswith(" ")
