"""The importance procedure on simulated studies where the truth is known (calibration.py).

Each check averages many simulated studies and allows two Monte Carlo standard errors. The
negative check shows the calibration can fail: ignoring templates on clustered data (row-level
sign flips) inflates the FDR, so the cluster handling is what keeps it below alpha.
"""

import numpy as np
import pytest

from sae_reasoning.causal.calibration import calibrate, simulate, study

ALPHA, QUANTILE = 0.05, 0.95
SEEDS = 200
# Few templates, strong template effects: the regime where row-level tests mislead.
CLUSTERED = dict(cluster_sd=1.0, n_clusters=15, cluster_size=8, effect=1.0, bias=0.0)


def _binomial_se(p: float, n: int) -> float:
    return float(np.sqrt(p * (1 - p) / n))


def test_a_study_has_the_roles_groups_and_truth_it_was_given():
    c = study(3, n_groups=2, n_candidates=10, n_true=4, n_controls=5, n_null=20)
    assert len(c) == 2 * 35 and set(c.benchmark) == {"b0", "b1"}
    assert c[c.true].role.eq("candidate").all() and c.true.sum() == 2 * 4
    assert not c.null_too_small.any() and (c.n_null == 20).all()
    out = simulate(3, n_true=4, effect=2.0)
    assert out["power"] == 1.0 and 0 <= out["fdr"] <= 1
    with pytest.raises(TypeError, match="unknown settings"):
        study(0, efect=1.0)


def test_fdr_is_controlled_with_power_on_clustered_noisy_data():
    r = calibrate(SEEDS, effect=0.8)
    print({k: v for k, v in r.items() if k != "settings"})
    assert r["mean_fdr"] <= ALPHA + 2 * r["fdr_se"]
    assert r["power"] > 0.5
    # The magnitude criterion alone passes controls at the rate it promises, at most 1 - q.
    assert r["control_magnitude_rate"] <= (1 - QUANTILE) + 2 * r["control_magnitude_rate_se"]
    assert r["control_fp_rate"] <= r["control_magnitude_rate"]


def test_only_zero_effect_features_gives_almost_no_calls():
    r = calibrate(SEEDS, n_true=0)
    print({k: v for k, v in r.items() if k != "settings"})
    assert r["mean_calls"] < 0.2
    # Under the global null BH bounds the chance of any call by alpha.
    assert r["any_false_call_rate"] <= ALPHA + 2 * _binomial_se(ALPHA, SEEDS)
    assert r["control_magnitude_rate"] <= (1 - QUANTILE) + 2 * r["control_magnitude_rate_se"]
    assert r["control_fp_rate"] <= (1 - QUANTILE)


def test_ignoring_templates_inflates_fdr_and_cluster_handling_fixes_it():
    aware = calibrate(SEEDS, **CLUSTERED)
    rows = calibrate(SEEDS // 2, cluster_aware=False, **CLUSTERED)
    print("cluster-aware", {k: v for k, v in aware.items() if k != "settings"})
    print("row-level", {k: v for k, v in rows.items() if k != "settings"})
    # Row-level p-values are anti-conservative: far more than alpha of the no-effect features
    # reach p < alpha, and the FDR of the calls exceeds alpha.
    assert rows["zero_effect_p_below_alpha"] > 3 * ALPHA
    assert rows["mean_fdr"] - 2 * rows["fdr_se"] > ALPHA
    # The same data with cluster sign flips: p-values calibrated, FDR controlled, power left.
    assert aware["zero_effect_p_below_alpha"] <= ALPHA + 2 * aware["zero_effect_p_below_alpha_se"]
    assert aware["mean_fdr"] <= ALPHA + 2 * aware["fdr_se"]
    assert aware["power"] > 0.3


def test_controls_pass_the_magnitude_criterion_at_its_rate_whatever_the_bias():
    # Biases as large as the SE of a mean effect: BH alone calls many no-effect features, the
    # FDR promise is gone (see calibration.py), but a control still passes <= 1 - q of the time.
    r = calibrate(SEEDS // 2, bias=0.3)
    assert r["fdr_significant"] > 2 * ALPHA
    assert r["control_fp_rate"] <= r["control_magnitude_rate"]
    assert r["control_magnitude_rate"] <= (1 - QUANTILE) + 2 * r["control_magnitude_rate_se"]


@pytest.mark.parametrize("n", [1, 5])
def test_calibrate_reports_means_and_standard_errors(n):
    r = calibrate(n, n_candidates=10, n_true=2, n_controls=5, n_null=20, n_perm=200)
    assert r["n_seeds"] == n and r["settings"]["n_perm"] == 200
    assert {"mean_fdr", "fdr_se", "power", "control_fp_rate", "any_false_call_rate"} <= set(r)
    assert np.isnan(r["fdr_se"]) == (n == 1)
