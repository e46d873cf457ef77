"""Each statistic against a case small enough to check by hand, or against its coverage."""

import numpy as np
import pandas as pd
import pytest

from sae_reasoning.causal.stats import (
    bh_qvalues,
    bootstrap_ci,
    importance_calls,
    mcnemar_exact,
    min_null_size,
    null_rank,
    paired_difference,
    paired_effect,
    sign_flip_pvalue,
    sign_flip_pvalues,
    summarize_calls,
)


def test_bootstrap_ci_of_constant_differences_is_that_constant():
    assert bootstrap_ci([-0.5] * 7) == (-0.5, -0.5)


def test_bootstrap_ci_of_two_values_spans_their_extremes():
    # Resampled means of {0, 1} with n=2 are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4:
    # the 2.5% and 97.5% quantiles are 0 and 1.
    lo, hi = bootstrap_ci([0.0, 1.0], n_boot=4000, seed=1)
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = bootstrap_ci(np.r_[np.zeros(50), np.ones(50)], n_boot=4000)
    # Mean 0.5, standard error 0.05: the percentile interval is about 0.5 +- 1.96 * 0.05.
    assert lo == pytest.approx(0.402, abs=0.02) and hi == pytest.approx(0.598, abs=0.02)


def test_sign_flip_exact_pvalue():
    # Five equal differences: of the 2^5 sign patterns, only all + and all - reach |mean| = 1.
    assert sign_flip_pvalue([1, 1, 1, 1, 1]) == pytest.approx(2 / 32)
    # Zeros carry no sign: [1, 1, 0] is the 2-flip case, p = 2/4.
    assert sign_flip_pvalue([1, 1, 0]) == pytest.approx(0.5)
    assert sign_flip_pvalue([0, 0, 0]) == 1.0
    # Large n: Monte Carlo, and a clear shift is significant.
    assert sign_flip_pvalue(np.full(40, -0.3) + np.linspace(-0.1, 0.1, 40)) < 1e-3


def test_mcnemar_exact_on_discordant_pairs():
    clean = [1, 1, 1, 1, 1, 1, 0, 0]
    ablated = [0, 0, 0, 0, 0, 1, 1, 0]  # b = 5 lost, c = 1 gained
    p, b, c = mcnemar_exact(clean, ablated)
    assert (b, c) == (5, 1)
    # Two-sided binomial, n=6, k=5: P(X<=1) + P(X>=5) = (1 + 6 + 6 + 1) / 64.
    assert p == pytest.approx(14 / 64)
    assert mcnemar_exact([1, 0], [1, 0]) == (1.0, 0, 0)


def test_benjamini_hochberg_qvalues():
    # Sorted p (0.01, 0.02, 0.03, 0.5), m = 4: p_i * m / i = 0.04, 0.04, 0.04, 0.5.
    q = bh_qvalues([0.03, 0.5, 0.01, 0.02])
    np.testing.assert_allclose(q, [0.04, 0.5, 0.04, 0.04])
    # q_(i) = min over j >= i of p_(j) m / j: (0.01, 0.04, 0.04) -> (0.03, 0.04, 0.04).
    np.testing.assert_allclose(bh_qvalues([0.01, 0.04, 0.04]), [0.03, 0.04, 0.04])
    q = bh_qvalues([0.01, np.nan, 0.02])
    assert np.isnan(q[1]) and q[0] == pytest.approx(0.02) and q[2] == pytest.approx(0.02)


def test_paired_effect_reports_cis_and_pvalues():
    out = paired_effect([0.0] * 6, [-1.0] * 6, [1] * 6, [0] * 6)
    assert out["delta_logprob_lo"] == out["delta_logprob_hi"] == -1.0
    assert out["delta_accuracy_lo"] == out["delta_accuracy_hi"] == -1.0
    assert out["p_logprob"] == pytest.approx(2 / 64)
    assert out["p_accuracy"] == pytest.approx(2 / 64)
    assert (out["lost_correct"], out["gained_correct"]) == (6, 0)


def _clustered(rng, n_sets, n_clusters=30, size=5, mean=0.3, cluster_sd=1.0):
    """n_sets data sets on the same examples: a shared effect per cluster (template) + noise."""
    labels = np.repeat(np.arange(n_clusters), size)
    d = (
        mean
        + cluster_sd * rng.standard_normal((n_sets, n_clusters))[:, labels]
        + rng.standard_normal((n_sets, len(labels)))
    )
    return d, labels


def test_cluster_bootstrap_resamples_whole_clusters():
    d = np.array([1.0, 1.0, 1.0, 0.0])
    # Clusters {a: 1,1,1} and {b: 0}: resamples aa, ab, ba, bb have row means 1, 3/4, 3/4, 0.
    lo, hi = bootstrap_ci(d, clusters=["a", "a", "a", "b"], n_boot=4000)
    assert (lo, hi) == (0.0, 1.0)
    # Every example its own cluster is the row-level bootstrap, draw for draw.
    x = np.random.default_rng(0).standard_normal(40)
    assert bootstrap_ci(x, clusters=np.arange(40) + 100) == bootstrap_ci(x)
    with pytest.raises(ValueError, match="labels"):
        bootstrap_ci(x, clusters=[0, 1])


def test_cluster_bootstrap_covers_the_mean_and_row_level_does_not():
    rng = np.random.default_rng(1)
    d, labels = _clustered(rng, 400)
    cover = {"cluster": 0, "row": 0}
    for k, x in enumerate(d):
        for name, cl in (("cluster", labels), ("row", None)):
            lo, hi = bootstrap_ci(x, clusters=cl, n_boot=1000, seed=k)
            cover[name] += lo <= 0.3 <= hi
    # 30 clusters of 5, intra-cluster correlation 0.5: the row-level interval is ~sqrt(3)
    # too narrow (expected coverage ~74%); the cluster bootstrap is near 95% (a percentile
    # bootstrap with 30 clusters runs slightly under).
    assert 0.90 <= cover["cluster"] / 400 <= 0.99
    assert cover["row"] / 400 < 0.85


def test_cluster_sign_flip_exact_pvalues():
    # Six equal differences in three clusters: 2 of the 2^3 cluster sign patterns reach it.
    assert sign_flip_pvalue([1] * 6, clusters=[0, 0, 1, 1, 2, 2]) == pytest.approx(2 / 8)
    # Cluster sums 2 and 2 (unequal sizes): patterns give |sum| 4, 0, 0, 4.
    assert sign_flip_pvalue([2, 1, 1], clusters=["a", "b", "b"]) == pytest.approx(0.5)
    # A cluster summing to zero carries no sign information: two informative clusters left.
    assert sign_flip_pvalue([1, -1, 1, 1], clusters=[0, 0, 1, 2]) == pytest.approx(0.5)
    # Many clusters: Monte Carlo, and a clear shift is significant.
    x = np.full(60, -0.3) + np.linspace(-0.1, 0.1, 60)
    assert sign_flip_pvalue(x, clusters=np.arange(60) // 3) < 1e-3


def test_batched_sign_flips_match_one_at_a_time():
    d, labels = _clustered(np.random.default_rng(2), 5, n_clusters=20, mean=0.0)
    batch = sign_flip_pvalues(d, clusters=labels, n_perm=500, seed=3)
    one = [sign_flip_pvalue(x, clusters=labels, n_perm=500, seed=3) for x in d]
    np.testing.assert_allclose(batch, one)
    exact = sign_flip_pvalues(d[:, :40], clusters=labels[:40])  # 8 clusters: all 256 patterns
    one = [sign_flip_pvalue(x, clusters=labels[:40]) for x in d[:, :40]]
    np.testing.assert_allclose(exact, one)


def test_cluster_sign_flip_holds_its_level_and_row_level_does_not():
    d, labels = _clustered(np.random.default_rng(4), 600, n_clusters=20, mean=0.0)
    p_cluster = sign_flip_pvalues(d, clusters=labels, n_perm=1000)
    p_row = sign_flip_pvalues(d, n_perm=1000)
    se = np.sqrt(0.05 * 0.95 / 600)
    assert np.mean(p_cluster < 0.05) <= 0.05 + 3 * se
    assert np.mean(p_row < 0.05) > 0.2


def test_paired_difference():
    a = np.array([-1.0, -0.5, -2.0, -1.5, -1.0, -0.8])
    out = paired_difference(a, a + 0.5)
    assert out["diff"] == pytest.approx(-0.5) and out["lo"] == out["hi"] == pytest.approx(-0.5)
    assert out["p"] == pytest.approx(2 / 64)
    assert paired_difference(a, a + 0.5, clusters=[0, 0, 1, 1, 2, 2])["p"] == pytest.approx(2 / 8)
    assert paired_difference(a, a)["p"] == 1.0
    with pytest.raises(ValueError, match="same examples"):
        paired_difference(a, a[:3])


def test_paired_effect_with_clusters():
    out = paired_effect([0.0] * 6, [-1.0] * 6, [1] * 6, [0] * 6, clusters=[0, 0, 1, 1, 2, 2])
    assert out["p_logprob"] == pytest.approx(2 / 8)
    assert out["p_accuracy"] == pytest.approx(2 / 64)  # McNemar: rows as independent
    assert out["p_accuracy_cluster"] == pytest.approx(2 / 8)
    assert paired_effect([0.0] * 6, [-1.0] * 6, [1] * 6, [0] * 6)[
        "p_accuracy_cluster"
    ] == pytest.approx(2 / 64)


def test_null_rank_is_the_conformal_rank():
    assert null_rank(19, 0.95) == 19 and null_rank(50, 0.95) == 49 and null_rank(99, 0.95) == 95
    assert null_rank(5, 0.95) == 5 and min_null_size(0.95) == 19 and min_null_size(0.9) == 9


def _calls_table() -> pd.DataFrame:
    rows = [  # role, feature, delta, p, mode, benchmark
        ("candidate", 1, -1.0, 0.01, "zero", "a"),
        ("candidate", 2, -0.15, 0.02, "zero", "a"),
        ("candidate", 3, -0.6, 0.03, "zero", "b"),
        ("candidate", 4, -0.9, 0.5, "zero", "b"),
        ("candidate", 5, -2.0, 0.001, "mean", "a"),
        ("control", 11, 0.2, 0.001, "zero", "a"),
        ("control", 12, -0.7, 0.2, "zero", "b"),
    ]
    rows += [("null", 100 + i, (-1) ** i * 0.01 * (i + 1), 0.5, "zero", "a") for i in range(19)]
    rows += [("null", 200 + i, 0.1 * (i + 1), 0.5, "zero", "b") for i in range(5)]
    df = pd.DataFrame(rows, columns=["role", "feature", "delta", "p", "mode", "benchmark"])
    return df.assign(endpoint="logprob").set_index(np.arange(len(df))[::-1] + 1000)


def test_importance_calls_pools_bh_and_thresholds_per_group():
    calls = importance_calls(_calls_table())
    c = calls.set_index("feature")
    # Candidates are one BH family across groups: sorted p .001 .01 .02 .03 .5, m = 5 ->
    # .005 .025 .0333 .0375 .5. Candidate 3 is significant only because of the pooling (in
    # its own group b, BH of (.03, .5) gives .06).
    np.testing.assert_allclose(c.loc[[5, 1, 2, 3, 4], "q"], [0.005, 0.025, 0.1 / 3, 0.0375, 0.5])
    np.testing.assert_allclose(c.loc[[11, 12], "q"], [0.002, 0.2])  # controls: own family
    # Group zero/a: 19 nulls |delta| .01 .. .19, rank ceil(.95 * 20) = 19 -> .19.
    # Group zero/b: 5 nulls .1 .. .5, rank capped at 5 -> .5, flagged too small.
    # Group mean/a: no nulls -> no threshold, nothing important.
    assert c.loc[1, "null_threshold"] == pytest.approx(0.19) and not c.loc[1, "null_too_small"]
    assert c.loc[3, "null_threshold"] == pytest.approx(0.5) and c.loc[3, "null_too_small"]
    assert np.isnan(c.loc[5, "null_threshold"]) and c.loc[5, "n_null"] == 0
    assert c.significant[c.significant].index.tolist() == [1, 2, 3, 5, 11]
    assert c.important[c.important].index.tolist() == [1, 3, 11]  # 2 too small, 5 no nulls
    assert (calls.index == _calls_table().index).all()


def test_summarize_calls_counts():
    s = summarize_calls(importance_calls(_calls_table()))
    assert (s["alpha"], s["null_quantile"]) == (0.05, 0.95)
    counts = [
        s[f"{r}_{k}"]
        for r in ("candidates", "controls")
        for k in ("tested", "significant", "important")
    ]
    assert counts == [5, 4, 2, 2, 1, 1]
    assert s["null_size"] == {"zero/a/logprob": 19, "zero/b/logprob": 5, "mean/a/logprob": 0}
    assert s["null_too_small"] == ["mean/a/logprob", "zero/b/logprob"]


def test_bootstrap_draws_are_the_seeds_whichever_came_before():
    """The resample indices are kept across calls (a sweep tests 100+ conditions on the same
    clusters): each call's interval is still the one drawn afresh from its seed."""
    rng = np.random.default_rng(5)
    for d in (rng.normal(size=9), rng.normal(size=9), rng.normal(size=4)):
        idx = np.random.default_rng(3).integers(0, len(d), size=(500, len(d)))
        want = np.quantile(d[idx].mean(1), [0.025, 0.975])
        assert bootstrap_ci(d, n_boot=500, seed=3) == tuple(want)
    signs = np.random.default_rng(2).integers(0, 2, size=(14, 300), dtype=np.int8) * 2.0 - 1.0
    sign_flip_pvalues(rng.normal(size=(1, 14)), n_perm=300, seed=7)  # another seed's, kept too
    for _ in range(2):  # 14 clusters: random patterns, drawn once and kept
        d = rng.normal(size=(2, 14)) + 0.3
        stat, observed = np.abs(d @ signs), np.abs(d.sum(1))
        want = (1 + (stat >= observed[:, None] * (1 - 1e-9) - 1e-12).sum(1)) / 301
        np.testing.assert_array_equal(sign_flip_pvalues(d, n_perm=300, seed=2), want)


def _scores(n_rows: int, shift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    bench = np.where(np.arange(n_rows) % 3 == 0, "logic", "gsm8k")
    return pd.DataFrame(
        {
            "row": np.arange(n_rows) * 2,
            "benchmark": bench,
            "gold_logprob": rng.normal(-2, 1, n_rows) + shift,
            "logit_diff": np.where(bench == "logic", rng.normal(1, 1, n_rows), np.nan),
            "correct": rng.random(n_rows) < 0.5,
            "kl": rng.random(n_rows),
        }
    )


def test_condition_effects_pair_examples_by_row_whatever_the_order():
    from sae_reasoning.causal.effects import condition_effects

    clean, ablated = _scores(30, 0.0, 0), _scores(30, -0.4, 1)
    ablated.loc[4, "kl"] = np.nan  # skipped in the mean, as pandas does
    clusters = pd.Series([f"t{r // 6}" for r in clean["row"]], index=clean["row"])
    eff = condition_effects(clean, ablated, clusters, n_boot=300, seed=0).set_index("benchmark")
    # The same examples in another order, with an example clean does not have: the same rows.
    extra = _scores(31, 5.0, 2).iloc[[30]]
    shuffled = pd.concat([ablated, extra]).sample(frac=1.0, random_state=0)
    again = condition_effects(clean, shuffled, clusters, n_boot=300, seed=0)
    pd.testing.assert_frame_equal(eff.reset_index(), again, check_exact=True)
    m = clean.merge(ablated, on=["row", "benchmark"], suffixes=("_clean", ""))
    assert list(eff.index) == ["all", "gsm8k", "logic"]
    for name, d in [("all", m), *m.groupby("benchmark")]:
        row = eff.loc[name]
        assert row["n"] == len(d)
        assert row["delta_logprob"] == d["gold_logprob"].mean() - d["gold_logprob_clean"].mean()
        assert row["kl"] == d["kl"].mean()  # NaN skipped
        assert row["ablated_accuracy"] == d["correct"].mean()
    assert np.isnan(eff.loc["gsm8k", "delta_logit_diff"])  # no choice there
    d = m[m.benchmark == "logic"]
    assert eff.loc["logic", "delta_logit_diff"] == pytest.approx(
        (d.logit_diff - d.logit_diff_clean).mean(), abs=1e-12
    )


def test_exact_sign_patterns_are_every_pattern_once():
    import itertools

    from sae_reasoning.causal.stats import _sign_matrix

    for n in (1, 3, 7, 12):
        signs = _sign_matrix(n, exact=True, n_perm=0, seed=0)
        want = np.array(list(itertools.product((-1.0, 1.0), repeat=n))).T
        assert np.array_equal(signs, want)
        assert not signs.flags.writeable  # kept across calls: nobody may change it
