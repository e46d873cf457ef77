"""The notebook's tables and per-benchmark effects plot (reporting/explore.py), and the committed
notebook itself (no outputs, overridable parameters). The notebook runs end to end in
test_e2e.py."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sae_reasoning.reporting import explore
from tests.tiny_project import REPO

NOTEBOOK = REPO / "notebooks" / "explore_results.ipynb"
HOOK = "blocks.1.hook_resid_post"


def _rows(feature, role, pooled, per_bench, mode="zero"):
    rows = [{"benchmark": "all", "delta_logprob": pooled}]
    rows += [{"benchmark": b, "delta_logprob": d} for b, d in per_bench.items()]
    return [
        {
            **r,
            "feature": feature,
            "role": role,
            "mode": mode,
            "hook_point": HOOK,
            "model": "m",
            "delta_logprob_lo": r["delta_logprob"] - 0.05,
            "delta_logprob_hi": r["delta_logprob"] + 0.05,
        }
        for r in rows
    ]


@pytest.fixture
def effects() -> pd.DataFrame:
    rows = (
        _rows(7, "candidate", -0.1, {"gsm8k": -0.2, "math": 0.0})
        + _rows(3, "candidate", -0.5, {"gsm8k": -0.05, "math": -0.9})
        + _rows(11, "candidate", -0.2, {"gsm8k": -0.3, "math": -0.1})
        + _rows(3, "candidate", -0.01, {"gsm8k": -0.01, "math": -0.01}, mode="resample")
        + _rows(40, "control", 0.01, {"gsm8k": 0.02, "math": 0.0})
        + _rows(21, "control", -0.02, {"gsm8k": -0.03, "math": -0.01})
        + _rows(99, "null", -0.3, {"gsm8k": -0.3, "math": -0.3})
    )
    return pd.DataFrame(rows)


def test_per_benchmark_effects_orders_candidates_by_pooled_effect_then_controls(effects):
    d = explore.per_benchmark_effects(effects)
    assert set(d.benchmark) == {"gsm8k", "math"}  # the pooled rows are not a benchmark
    assert set(d["mode"]) == {"zero"} and "null" not in set(d.role)
    order = list(dict.fromkeys(zip(d.role, d.feature)))
    assert order == [
        ("candidate", 3),
        ("candidate", 11),
        ("candidate", 7),
        ("control", 21),
        ("control", 40),
    ]
    math3 = d[(d.feature == 3) & (d.benchmark == "math")].delta_logprob
    assert math3.tolist() == [-0.9]  # the per-benchmark value, not the pooled one


def test_plot_puts_feature_ids_on_x_and_controls_in_a_panel_apart(effects):
    fig = explore.plot_per_benchmark_effects(effects)
    cand, ctrl = fig.axes[:2]
    assert [t.get_text() for t in cand.get_xticklabels()] == ["3", "11", "7"]
    assert [t.get_text() for t in ctrl.get_xticklabels()] == ["21", "40"]
    assert [t.get_text() for t in cand.get_legend().get_texts()] == ["gsm8k", "math"]
    # feature 3's math marker sits at its measured effect
    ys = [y for line in cand.lines for x, y in line.get_xydata() if round(x) == 0]
    assert -0.9 in [round(float(y), 3) for y in ys]


def test_plot_errors_name_what_is_missing(effects):
    with pytest.raises(ValueError, match="delta_logprob"):
        explore.plot_per_benchmark_effects(effects.drop(columns="delta_logprob"))
    with pytest.raises(ValueError, match="mode 'mean'"):
        explore.plot_per_benchmark_effects(effects, mode="mean")


def test_ranking_table_has_one_column_per_benchmark():
    ranked = [
        {
            "rank": i + 1,
            "feature": f,
            "delta_logprob": d,
            "delta_logprob_ci": [d - 0.1, d + 0.1],
            "q_logprob": 0.01,
            "important": True,
            "token_driven": False,
            "in_circuit": True,
            "firing_rate": 0.02,
            "per_benchmark": {"math": {"delta_logprob": d * 2}, "gsm8k": {"delta_logprob": 0.0}},
        }
        for i, (f, d) in enumerate([(5, -0.4), (9, -0.1), (2, -0.05)])
    ]
    t = explore.ranking_table({"m": {HOOK: ranked}}, top=2)
    assert t.feature.tolist() == [5, 9]
    assert t["Δ math"].tolist() == [-0.8, -0.2] and t["Δ gsm8k"].tolist() == [0.0, 0.0]


def test_baseline_table_marks_what_the_causal_stage_analysed():
    chance = {
        "n": 40,
        "accuracy": 0.5,
        "ci": [0.35, 0.65],
        "chance": 0.25,
        "constant_answer": "4",
        "p_value": 0.001,
        "above_chance": True,
    }
    res = {
        "m": {
            "selection": {"analysed": ["math"]},
            "baseline_vs_chance": {"math": chance, "logic": {**chance, "above_chance": False}},
        }
    }
    t = explore.baseline_table(res).set_index("benchmark")
    assert t.loc["math", "analysed"] and not t.loc["logic", "analysed"]
    assert (t.ci_lo.tolist(), t.chance.tolist()) == ([0.35, 0.35], [0.25, 0.25])


def test_dashboard_page_finds_generated_pages_only(tmp_path):
    (tmp_path / HOOK).mkdir()
    (tmp_path / HOOK / "feature_12.html").write_text("<html></html>")
    assert explore.dashboard_page(tmp_path, HOOK, 12) == tmp_path / HOOK / "feature_12.html"
    assert explore.dashboard_page(tmp_path, HOOK, 13) is None
    assert explore.dashboard_page(tmp_path, HOOK) is None  # no index.html written
    assert explore.dashboard_page(tmp_path / "absent", HOOK, 12) is None


def test_committed_notebook_has_no_outputs_and_overridable_parameters():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), (
        "clear the notebook's outputs"
    )
    params = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and code[0] is params[0], "the first code cell holds the parameters"
    src = "".join(params[0]["source"])
    assert "project_path =" in src and "env =" in src
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
