"""Baseline vs chance: Wilson CIs, the best-constant-answer baseline, an exact binomial test."""

import pandas as pd
import pytest
from scipy.stats import binomtest

from sae_reasoning.chance import accuracy_vs_chance, baseline_vs_chance, constant_answer_rate


def test_open_answer_chance_is_the_most_frequent_gold_answer_not_zero():
    rate, best = constant_answer_rate(
        pd.Series(["12", "12", "7", "3", "12 ", "9", "1", "2", "4", "5"])
    )
    assert rate == pytest.approx(0.3) and best == "12"


def test_choice_chance_is_at_least_a_uniform_guess():
    rate, _ = constant_answer_rate(pd.Series(["yes", "no", "yes", "no"]), pd.Series([0.5] * 4))
    assert rate == pytest.approx(0.5)
    rate, best = constant_answer_rate(pd.Series(["yes"] * 7 + ["no"] * 3), pd.Series([0.5] * 10))
    assert (
        rate == pytest.approx(0.7) and best == "yes"
    )  # unbalanced gold answers: the constant "yes"


def test_three_of_five_hundred_is_not_above_a_one_percent_constant_answer():
    # The case: 3/500 correct where a constant answer scores ~1%: "above chance" must be no.
    r = accuracy_vs_chance(pd.Series([True] * 3 + [False] * 497), chance=0.01)
    assert not r["above_chance"] and r["p_value"] > 0.5
    lo, hi = r["ci"]
    assert lo < 0.006 < hi and lo > 0 and hi < 0.02  # Wilson interval around 0.6%
    assert r["p_value"] == pytest.approx(binomtest(3, 500, 0.01, alternative="greater").pvalue)


def test_exact_chance_level_is_not_above_chance_and_a_clear_lead_is():
    assert not accuracy_vs_chance(pd.Series([True, False] * 100), 0.5)["above_chance"]
    r = accuracy_vs_chance(pd.Series([True] * 70 + [False] * 30), 0.5)
    assert r["above_chance"] and r["p_value"] < 1e-4


def test_baseline_vs_chance_per_benchmark_from_scores_and_prompts():
    prompts = pd.DataFrame(
        {
            "benchmark": ["a"] * 6 + ["b"] * 4,
            "answer": ["5", "5", "5", "1", "2", "3", "yes", "no", "yes", "no"],
            "answer_type": ["numeric"] * 6 + ["choice"] * 4,
            "choice_targets": [[]] * 6 + [[" yes", " no"]] * 4,
        }
    )
    scores = pd.DataFrame(
        {
            "row": range(10),
            "benchmark": prompts["benchmark"],
            "correct": [True, True, True, False, False, False, True, True, True, True],
        }
    )
    out = baseline_vs_chance(scores, prompts)
    assert out["a"]["chance"] == pytest.approx(0.5) and out["a"]["constant_answer"] == "5"
    assert out["a"]["accuracy"] == pytest.approx(0.5) and not out["a"]["above_chance"]
    assert out["b"]["chance"] == pytest.approx(0.5) and out["b"]["accuracy"] == 1.0
    assert out["b"]["p_value"] == pytest.approx(0.5**4)
    assert "binomial" in out["a"]["test"]
