"""The causal section's methods: how every effect, CI, p-value and call below was made, and
the numerical floor each SAE's effects were measured against."""

from __future__ import annotations

METHODS = [
    "Method and tests, for every table below:",
    "- The SAE is spliced in at its layer with its error term kept, so the model is unchanged "
    "until a feature is touched (checked: splice identity). Features are ranked by attribution "
    "patching on the `select` split; the top candidates, controls, a null of random live features, "
    "sets, directions, the circuit and all features are then ablated exactly on the `heldout` "
    "split: selection and measurement never share an example.",
    "- Ablation references come from the `select` split only, per benchmark: mean ablation uses "
    "the feature's mean at the same position type (last prompt token, answer tokens; few-shot "
    "block and question with positions=all); resample ablation uses its value in another example "
    "of the same benchmark at the aligned position (in the few-shot block, which every example "
    "shares, that is the clean value).",
    "- With worked-solution prompts, effects are measured teacher-forced: gold log-prob and exact "
    "match of the final answer after the gold solution (the baseline's accuracy comes from "
    "generated solutions).",
    "- Δ = ablated − clean, mean over held-out examples. [95% CI]: paired bootstrap over "
    "examples, resampling whole templates where examples share one. p: two-sided sign-flip "
    "permutation test (gold log-prob, logit difference; templates flipped whole) or McNemar's "
    "exact test (accuracy).",
    "- Numerical floor: the clean answer rows are scored again above the SAE's layer, from the "
    "clean residual every condition starts from, one example to a pass, which changes nothing but "
    "the order float sums are taken in; a condition's per-example "
    "change in gold log-prob (or logit difference) within a stated multiple of the largest such "
    "rounding change (or of the identity splice's) counts as exactly 0 before every mean, CI, test "
    "and threshold: its sign would be set by rounding. Per-example KL is clipped at 0, its bound.",
    "- Significant: Benjamini-Hochberg q < α over the candidate features, one family pooled across "
    "ablation modes, benchmarks and endpoints. Important: significant AND |Δ| above the null "
    "threshold, the stated quantile of |Δ| over random live features ablated the same way (per "
    "mode, benchmark and endpoint); controls, null and random sets are drawn from the features "
    "that fire where the ablations act on the select split, as every candidate does (a feature "
    "silent there has Δ = 0 exactly). Random control features go through the same procedure in a "
    "family of their own: the features they get called important are false positives.",
    "- Top-K vs controls: paired tests of Δ(top-K) − Δ(control) on the same examples (bootstrap "
    "CI, sign-flip p).",
]


def floor_line(floor: dict | None) -> list[str]:
    if not floor:
        return []
    f, (b, alt) = floor["floor"], floor["batch_sizes"]
    return [
        f"- numerical floor: per-example |Δ| within {f['logprob']:.1e} (gold log-prob), "
        f"{f['logit_diff']:.1e} (logit diff) counts as 0: {floor['factor']:g} x the largest "
        f"rounding change (clean rows rescored {alt} example a pass instead of up to {b}: "
        f"{floor['rebatched']['logprob']:.1e}; identity splice: {floor['identity']['logprob']:.1e})"
    ]
