"""The report's per-benchmark effects (table and plot), dashboard links and circuit sparsity,
from a hand-made effects table shaped like <model>.feature_effects."""

import re

import pandas as pd
import pytest

from sae_reasoning.causal.analysis import CausalConfig
from sae_reasoning.causal.circuits import CircuitSearch
from sae_reasoning.causal.summary import circuit_summary
from sae_reasoning.reporting import plots
from sae_reasoning.reporting.causal_section import circuit_lines, hook_section, per_benchmark_table
from sae_reasoning.reporting.report import markdown

HOOK = "blocks.1.hook_resid_post"
# feature -> (role, pooled Δ, {benchmark: Δ}); 741 is the example.
FEATURES = {
    741: ("candidate", -0.092, {"math": -0.229, "gsm8k": -0.048, "logic": 0.0}),
    12: ("candidate", -0.051, {"math": -0.010, "gsm8k": -0.120, "logic": -0.023}),
    3005: ("candidate", -0.004, {"math": -0.002, "gsm8k": -0.006, "logic": -0.004}),
    77: ("control", 0.001, {"math": 0.002, "gsm8k": 0.0, "logic": 0.001}),
    4242: ("control", -0.002, {"math": -0.003, "gsm8k": -0.001, "logic": -0.002}),
    9: ("null", 0.003, {"math": 0.004, "gsm8k": 0.002, "logic": 0.003}),
}
N = {"math": 40, "gsm8k": 30, "logic": 20, "all": 90}


def effects_table() -> pd.DataFrame:
    rows = []
    for feat, (role, pooled, per) in FEATURES.items():
        for mode in ("zero", "resample"):
            for bench, d in {**per, "all": pooled}.items():
                d = (
                    d if mode == "zero" else d + 0.5
                )  # resample rows must not leak into the zero-ablation views
                rows.append(
                    {
                        "model": "m",
                        "hook_point": HOOK,
                        "feature": feat,
                        "role": role,
                        "mode": mode,
                        "condition": f"{mode}:{feat}",
                        "benchmark": bench,
                        "n": N[bench],
                        "n_clusters": N[bench] // 2,
                        "delta_logprob": d,
                        "delta_logprob_lo": d - 0.01,
                        "delta_logprob_hi": d + 0.01,
                        "null_threshold_logprob": 0.02,
                        "important_logprob": bool(feat == 741 and bench in ("math", "all")),
                    }
                )
    return pd.DataFrame(rows)


def cells(lines: list[str]) -> dict[str, dict[str, str]]:
    """The markdown table in `lines` as {feature id: {column header: cell}}."""
    table = [ln for ln in lines if ln.startswith("|")]
    header = [h.strip() for h in table[0].strip("|").split("|")]
    out = {}
    for ln in table[2:]:
        row = dict(zip(header, (c.strip() for c in ln.strip("|").split("|"))))
        out[re.sub(r"\[(\d+)\].*", r"\1", row["feature"])] = row
    return out


def test_per_benchmark_table_lists_each_benchmark_with_cis_candidates_then_controls():
    lines = per_benchmark_table(
        effects_table(), {741: 1, 12: 2, 3005: 3}, {"n_boot": 2000, "procedure": "p"}
    )
    t = cells(lines)
    assert list(t) == [
        "741",
        "12",
        "3005",
        "4242",
        "77",
    ]  # rank order, then the controls; no null feature
    assert (
        t["741"]["math (n 40, 20 clusters)"] == "**-0.229 [-0.239, -0.219]**"
    )  # important there: bold
    assert t["741"]["gsm8k (n 30, 15 clusters)"] == "-0.048 [-0.058, -0.038]"
    assert t["741"]["logic (n 20, 10 clusters)"] == "+0.000 [-0.010, +0.010]"
    assert t["741"]["pooled Δ [95% CI]"] == "**-0.092 [-0.102, -0.082]**"
    assert t["12"]["rank"] == "2" and t["77"]["rank"] == "random control"
    assert "paired cluster bootstrap, 2000 resamples" in "\n".join(lines)


def test_feature_effects_plot_has_feature_ids_per_benchmark_and_controls_in_their_own_panel():
    fig = plots.feature_effects(effects_table())
    cand, ctrl = fig.axes[:2]
    assert cand.get_title().endswith("candidates (rank order)") and ctrl.get_title().endswith(
        "random controls"
    )
    ticks = [t.get_text() for t in cand.get_xticklabels()]
    assert ticks == ["741", "12", "3005"]  # feature ids by pooled Δ, not ranks 0..n
    assert [t.get_text() for t in ctrl.get_xticklabels()] == ["4242", "77"]
    # One errorbar series per benchmark plus the pooled one; 741's math marker is at its tick.
    series = {c.get_label(): c for c in cand.containers}
    assert set(series) == {"gsm8k", "logic", "math", "pooled"}
    x, y = series["math"].lines[0].get_data()
    i = ticks.index("741")
    assert y[i] == pytest.approx(-0.229) and abs(x[i] - cand.get_xticks()[i]) < 0.5
    assert list(series["gsm8k"].lines[0].get_ydata()) == pytest.approx([-0.048, -0.120, -0.006])
    assert list(
        {c.get_label(): c for c in ctrl.containers}["pooled"].lines[0].get_ydata()
    ) == pytest.approx([-0.002, 0.001])


def test_feature_ids_link_to_their_dashboards_and_each_sae_links_its_index():
    s = {
        "d_sae": 4096,
        "alive_features": 4000,
        "n_select_examples": 10,
        "n_heldout_examples": 90,
        "clean": {},
        "all_features_zero": {"delta_accuracy": -0.3, "delta_logprob": -4.0, "kl": 1.0},
        "splice_identity_max_abs_logprob_change": 3e-6,
        "numerical_floor": {
            "floor": {"logprob": 4e-5, "logit_diff": 2e-5},
            "rebatched": {"logprob": 2e-5, "logit_diff": 1e-5},
            "identity": {"logprob": 3e-6, "logit_diff": 0.0},
            "factor": 2.0,
            "batch_sizes": [16, 1],
        },
        "spearman_attribution_vs_exact": 0.5,
        "token_injection": {"741": {"tokens": ["7"], "survival": 0.1, "token_driven": False}},
    }
    ranking = [
        {
            "rank": 1,
            "feature": 741,
            "delta_logprob": -0.092,
            "attribution_estimate": -0.1,
            "firing_rate": 0.01,
        }
    ]
    contexts = {"741": [{"activation": 3.0, "text": "2 + ⟦2⟧"}]}
    md = "\n".join(hook_section("m", HOOK, s, ranking, contexts, effects=effects_table()))
    page = f"features/m/{HOOK}/feature_741.html"
    assert f"({f'features/m/{HOOK}/index.html'})" in md
    # candidates, per-benchmark, token-injection and contexts tables: every row's id is a link
    assert md.count(f"[741]({page})") == 4
    for feat in (12, 3005, 77, 4242):
        assert f"[{feat}](features/m/{HOOK}/feature_{feat}.html)" in md
    assert not re.search(r"\| (741|12|3005|77|4242) \|", md)  # no bare id left in any table
    assert (
        "numerical floor: per-example |Δ| within 4.0e-05 (gold log-prob), 2.0e-05 (logit diff) "
        "counts as 0: 2 x the largest rounding change (clean rows rescored 1 example a pass "
        "instead of up to 16: 2.0e-05; identity splice: 3.0e-06)"
    ) in md


@pytest.mark.parametrize("share, sparse", [(0.045, False), (0.004, True)])
def test_circuit_wording_on_both_sides_of_the_sparsity_threshold(share, sparse):
    circ = {
        "found": True,
        "ablation_mode": "mean",
        "n_features": round(share * 4000),
        "share_of_alive": share,
        "search_recovered": 0.8,
        "fraction_target": 0.8,
        "estimate_size": None,
        "sparse_fraction": 0.02,
        "sparse": sparse,
    }
    line = circuit_lines(circ)[0]
    assert f"{share:.1%} of alive features" in line
    assert ("**not sparse**: above 2.0%" in line) is not sparse
    assert ("; sparse: at most 2.0%" in line) is sparse


def test_circuit_summary_records_the_threshold_and_checks_it():
    cfg = CausalConfig.from_params({"circuit_sparse_fraction": 0.05})
    none = CircuitSearch([], 0.8, None, 0.0, {}, None, found=False)
    out = circuit_summary(none, None, None, None, cfg, alive=1000)
    assert out["sparse_fraction"] == 0.05 and out["sparse"] is None  # no circuit, no verdict
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="causal.circuit_sparse_fraction"):
            CausalConfig.from_params({"circuit_sparse_fraction": bad})


def test_markdown_passes_each_sae_its_own_effects():
    eff = pd.concat([effects_table(), effects_table().assign(model="other")])
    s = {
        "d_sae": 4096,
        "alive_features": 4000,
        "n_select_examples": 10,
        "n_heldout_examples": 90,
        "clean": {},
        "all_features_zero": {"delta_accuracy": -0.3, "delta_logprob": -4.0, "kl": 1.0},
        "splice_identity_max_abs_logprob_change": 0.0,
        "spearman_attribution_vs_exact": 0.5,
    }
    baseline = pd.DataFrame(columns=["model", "benchmark", "correct", "chance", "gold_logprob"])
    training = {"m": {"activations": {}, "sae_metrics": {}}}
    md = markdown(baseline, training, {"m": {HOOK: s}}, {"m": {HOOK: []}}, effects=eff)
    assert (
        md.count(f"[741](features/m/{HOOK}/feature_741.html)") == 1
    )  # per-benchmark table, model m only
    assert "features/other/" not in md and "feature_effects.png" in md
