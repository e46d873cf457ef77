"""What the causal stage analyses: benchmarks above chance only, correct examples on request,
template clusters."""

import pandas as pd
import pytest

from sae_reasoning.causal.analysis import CausalConfig, select_examples
from sae_reasoning.scoring import encode_prompts
from tests.prompts_fixture import tiny_prompts


@pytest.fixture(scope="module")
def encoded(tiny_lms):
    prompts = tiny_prompts(n_open=20, n_choice=20)
    return prompts, encode_prompts(tiny_lms["llama"].tokenizer, prompts)


def _baseline(prompts, correct):
    return pd.DataFrame(
        {"row": range(len(prompts)), "benchmark": prompts["benchmark"], "correct": correct}
    )


def test_a_benchmark_at_chance_is_skipped_with_the_reason(encoded):
    prompts, enc = encoded
    # arith: 18/20 correct (constant answer 1/20): above chance; logic: 10/20 with chance 0.5: not.
    correct = [i >= 2 for i in range(20)] + [i % 2 == 0 for i in range(20)]
    select, heldout, facts = select_examples(
        enc, prompts, _baseline(prompts, correct), CausalConfig()
    )
    assert [b.name for b in select] == [b.name for b in heldout] == ["arith"]
    assert facts["analysed"] == ["arith"]
    assert (
        "not above chance" in facts["skipped"]["logic"] and "binomial" in facts["skipped"]["logic"]
    )
    assert facts["chance"]["logic"]["p_value"] > 0.05 and facts["chance"]["arith"]["above_chance"]


def test_require_above_chance_off_keeps_every_benchmark(encoded):
    prompts, enc = encoded
    correct = [False] * 40
    select, _, facts = select_examples(
        enc, prompts, _baseline(prompts, correct), CausalConfig(require_above_chance=False)
    )
    assert {b.name for b in select} == {"arith", "logic"} and facts["skipped"] == {}


def test_nothing_above_chance_analyses_nothing_and_says_why(encoded):
    prompts, enc = encoded
    select, heldout, facts = select_examples(
        enc, prompts, _baseline(prompts, [False] * 40), CausalConfig()
    )
    assert select == [] and heldout == [] and set(facts["skipped"]) == {"arith", "logic"}


def test_examples_correct_keeps_only_what_the_clean_model_solves(encoded):
    prompts, enc = encoded
    correct = [i % 4 != 1 for i in range(40)]
    select, heldout, _ = select_examples(
        enc,
        prompts,
        _baseline(prompts, correct),
        CausalConfig(examples="correct", require_above_chance=False),
    )
    rows = [e.row for b in select + heldout for e in b.examples]
    assert rows and all(correct[r] for r in rows)
    assert len(rows) == sum(correct)


def test_bad_examples_setting_is_refused():
    with pytest.raises(ValueError, match="causal.examples"):
        CausalConfig.from_params({"examples": "some"})


def test_circuit_quality_has_cis_and_is_withheld_when_the_denominator_is_not_clear():
    import numpy as np

    from sae_reasoning.causal.circuits import circuit_quality

    rng = np.random.default_rng(0)
    empty = -2.0 + 0.3 * rng.standard_normal(40)
    only = 0.1 * empty + 0.05 * rng.standard_normal(40)  # the circuit alone keeps 90% of the effect
    ablated = 0.9 * empty  # ablating it removes 90%
    q = circuit_quality(only, ablated, empty, None, n_boot=500)
    assert q["withheld"] is None
    assert q["faithfulness"] == pytest.approx(0.9, abs=0.03) and q["completeness"] == pytest.approx(
        0.1, abs=0.01
    )
    assert q["faithfulness_ci"][0] < q["faithfulness"] < q["faithfulness_ci"][1]
    # A whole-SAE effect indistinguishable from 0: no ratio is reported, and the reason is given.
    noise = rng.standard_normal(40)
    q = circuit_quality(noise, noise, noise - noise.mean(), None, n_boot=500)
    assert q["faithfulness"] is None and q["completeness"] is None and "contains 0" in q["withheld"]
    # Clusters widen the CI when whole templates move together.
    cl = np.repeat(np.arange(4), 10)
    shift = np.repeat(rng.standard_normal(4), 10)
    wide = circuit_quality(only + shift * 0.5, ablated, empty, cl, n_boot=500)
    narrow = circuit_quality(only + shift * 0.5, ablated, empty, None, n_boot=500)
    assert np.diff(wide["faithfulness_ci"])[0] > np.diff(narrow["faithfulness_ci"])[0]


def test_feature_statistics_count_every_firing_token(tmp_path):
    """Firing rates over batches of the capture store: the share of its tokens where each
    feature is positive, as one encode of every token gives it."""
    import torch

    from sae_reasoning.activations.norms import MassiveActivationFilter
    from sae_reasoning.activations.store import ActivationSet
    from sae_reasoning.causal.analysis import feature_statistics
    from tests.causal.test_splice import random_sae
    from tests.sae.conftest import write_store

    sae = random_sae(d_in=16, d_sae=48, seed=2)
    acts = torch.randn(2500, 16, generator=torch.Generator().manual_seed(4))
    write_store(tmp_path, acts, hook="blocks.1.hook_resid_post")
    cfg = CausalConfig(stats_tokens=10_000)
    cfg.exclude = MassiveActivationFilter(exclude_first_position=False, max_norm_ratio=None)
    stats = feature_statistics(sae, ActivationSet.open(tmp_path), "blocks.1.hook_resid_post", cfg)
    with torch.no_grad():
        want = (sae.encode(acts) > 0).double().mean(0)
    assert stats["n_tokens"] == 2500  # three batches of the store's 2,500 tokens
    assert 0 < want.mean() < 1
    torch.testing.assert_close(stats["firing_rate"].double(), want, rtol=0, atol=1e-7)
