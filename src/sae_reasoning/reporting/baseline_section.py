"""Section 1 of the report: does each model solve each benchmark, against chance?"""

from __future__ import annotations

import pandas as pd

from sae_reasoning.chance import CHANCE_RULE
from sae_reasoning.reporting.fmt import fmt, md

STAND_INS = {"gsm8k": "GSM8K-style", "math": "MATH-style", "logic": "logic"}


def benchmark_sources(prompts: pd.DataFrame) -> dict[str, str]:
    """benchmark -> what it is, e.g. "GSM8K-style, reasoning-gym gsm_symbolic" (prompts'
    `source`)."""
    if "source" not in prompts:
        return {}
    return {
        b: ", ".join(sorted(d["source"].dropna().astype(str).unique()))
        for b, d in prompts.groupby("benchmark")
    }


def benchmark_name(bench: str, sources: dict) -> str:
    """`gsm8k (GSM8K-style: reasoning-gym gsm_symbolic)`: what the benchmark is, not what it
    imitates."""
    src = sources.get(bench)
    return f"{bench} ({STAND_INS.get(bench, bench)}: {src})" if src else bench


HEADER = [
    "## 1. Baseline: does the model solve the benchmarks?",
    "",
    "Accuracy: greedy decoding reproduces the gold answer exactly (open answers; with "
    "worked-solution prompts, the answer extracted from the model's own generated solution) or "
    "the gold choice has the highest log-probability (choice questions), with a Wilson 95% CI. "
    f"Chance: the {CHANCE_RULE}. Above chance: an exact one-sided binomial test of accuracy > "
    "chance rejects at α = 0.05 (p shown). Gold log-prob: summed log-probability of the gold "
    "answer tokens, teacher-forced (after the gold solution with worked-solution prompts). All "
    "examples of the prompts table.",
    "",
    "| model | benchmark | prompt format | n | accuracy [95% CI] | chance (constant answer) | "
    "p (binomial) | above chance | gold log-prob | model's own answer = gold |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def baseline_section(baseline: pd.DataFrame, chance: dict, sources: dict) -> list[str]:
    L = list(HEADER)
    for (model, bench), d in baseline.groupby(["model", "benchmark"]):
        c = chance.get(model, {}).get(bench)
        if c is None:
            continue
        own = d.generated_correct.mean() if "generated_correct" in d else None
        fmt_ = d["prompt_format"].iloc[0] if "prompt_format" in d else "answer_only"
        lo, hi = c["ci"]
        constant = md(str(c["constant_answer"]))[:40]
        L.append(
            f"| {model} | {benchmark_name(bench, sources)} | {fmt_} ({c['accuracy_method']}) "
            f"| {c['n']} | {c['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] | "
            f"{c['chance']:.1%} ({constant}) | {c['p_value']:.2g} | "
            f"{'**yes**' if c['above_chance'] else 'no'} | {d.gold_logprob.mean():.2f} | "
            f"{fmt(own, pct=True)} |"
        )
    return L + ["", "![baseline accuracy](baseline_accuracy.png)", ""]
