"""Each statistic against a case small enough to check by hand."""

import numpy as np
import pytest

from sae_reasoning.causal.stats import bh_qvalues, bootstrap_ci, mcnemar_exact, paired_effect, sign_flip_pvalue


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
    ablated = [0, 0, 0, 0, 0, 1, 1, 0]   # b = 5 lost, c = 1 gained
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
