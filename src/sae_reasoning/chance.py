"""Is the model above chance? Accuracy per benchmark against a stated trivial baseline.

Chance is the accuracy of the best constant answer: always giving the most frequent gold
answer of the benchmark's examples. For open answers that is not 0 (GSM8K-style answers
repeat), for choice questions it is at least 1/#choices (exactly that when gold answers
are balanced). Taken in-sample, it is the highest rate any constant achieves on these
examples, so the test below is conservative.

Per benchmark: accuracy with a Wilson 95% interval, and an exact one-sided binomial test
of H0 "accuracy <= chance". "Above chance" means that test rejects at `alpha`.
"""

from __future__ import annotations

import pandas as pd
from scipy.stats import binomtest

CHANCE_RULE = (
    "rate of the best constant answer (the most frequent gold answer among the benchmark's "
    "examples; for choice questions at least 1/#choices)"
)


def constant_answer_rate(
    answers: pd.Series, choice_chance: pd.Series | None = None
) -> tuple[float, str]:
    """(rate, answer): how often the most frequent gold answer occurs; at least the mean
    1/#choices when the questions have choices."""
    counts = answers.astype(str).str.strip().value_counts()
    rate, best = (
        (float(counts.iloc[0] / len(answers)), str(counts.index[0])) if len(counts) else (0.0, "")
    )
    if choice_chance is not None and len(choice_chance) and choice_chance.mean() > rate:
        return float(choice_chance.mean()), "a uniform guess among the choices"
    return rate, best


def accuracy_vs_chance(correct: pd.Series, chance: float, alpha: float = 0.05) -> dict:
    """Accuracy, Wilson 95% CI, exact binomial p of H0 accuracy <= chance, and the verdict."""
    n, k = int(len(correct)), int(pd.Series(correct).astype(bool).sum())
    if n == 0:
        return {
            "n": 0,
            "correct": 0,
            "accuracy": None,
            "ci": [None, None],
            "chance": chance,
            "p_value": None,
            "above_chance": False,
        }
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    # chance 1 can never be beaten; chance 0 is beaten by any correct answer (p = 0 if k > 0).
    p = (
        1.0
        if chance >= 1
        else float(binomtest(k, n, chance, alternative="greater").pvalue)
        if chance > 0
        else (0.0 if k > 0 else 1.0)
    )
    return {
        "n": n,
        "correct": k,
        "accuracy": k / n,
        "ci": [float(ci.low), float(ci.high)],
        "chance": float(chance),
        "p_value": p,
        "above_chance": bool(p < alpha),
    }


def baseline_vs_chance(
    scores: pd.DataFrame, prompts: pd.DataFrame, alpha: float = 0.05
) -> dict[str, dict]:
    """benchmark -> accuracy_vs_chance of the clean model's `correct` column, with its trivial
    baseline.

    scores: baseline scores (columns row, benchmark, correct; `accuracy_method` if present);
    prompts: the prompts table they were scored on (columns benchmark, answer, answer_type;
    `row` indexes it).
    """
    table = prompts.reset_index(drop=True)
    out = {}
    for bench, d in scores.groupby("benchmark"):
        rows = table.loc[d["row"].to_numpy()]
        choice = rows["answer_type"].eq("choice")
        k_choices = rows.get("choice_targets")
        uniform = (
            k_choices[choice].map(lambda c: 1.0 / len(c))
            if k_choices is not None and choice.any()
            else None
        )
        rate, best = constant_answer_rate(rows["answer"], uniform)
        res = accuracy_vs_chance(d["correct"], rate, alpha)
        method = (
            d["accuracy_method"].iloc[0]
            if "accuracy_method" in d and len(d)
            else "teacher_forced_exact"
        )
        out[str(bench)] = {
            **res,
            "constant_answer": best,
            "chance_rule": CHANCE_RULE,
            "alpha": alpha,
            "test": "exact one-sided binomial test of accuracy > chance",
            "accuracy_method": str(method),
        }
    return out
