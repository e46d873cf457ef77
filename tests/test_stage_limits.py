"""stage_limits (benchmarks/phase4_stages.py's pure part): stages grouped from a ledger run
folder, each node's limit from budget.py's FLOP model, seconds at given rates, verdicts."""

from __future__ import annotations

import json

import pytest

from sae_reasoning import budget
from sae_reasoning.stage_limits import (
    format_table,
    group,
    limit_seconds,
    newest_run,
    node_limit,
    read_ledger,
    rows,
    verdict,
)

# 4 blocks of 1000 parameters, d_model 8, vocab 50
SHAPE = budget.ModelShape(
    d_model=8, n_layers=4, vocab_size=50, n_params=4400, block_params=(1000,) * 4
)
RATES = {"bare_tok_s": 100.0, "model_flop_s": 1e6, "sae_flop_s": 2e6}
COUNTS = {
    "layer": 1,
    "corpus_ctx": 16,
    "prompt_ctx": 10.0,
    "prompt_tokens": 300,
    "generated": 20,
    "d_in": 8,
    "d_sae": 64,
}


def _record(node, stage, wall, model=0, sae=0, start="2026-01-01T00:00:00"):
    return {
        "node": node,
        "namespace": node.split(".")[0] if "." in node else "",
        "stage": stage,
        "status": "done",
        "started_at": start,
        "wall_s": wall,
        "tokens": model + sae,
        "model_tokens": model,
        "sae_training_tokens": sae,
    }


@pytest.fixture
def run(tmp_path):
    older, newer = tmp_path / "2026-01-01T00.00.00.000Z", tmp_path / "2026-01-02T00.00.00.000Z"
    older.mkdir()
    newer.mkdir()
    records = [
        _record("make_prompts", "data_loading", 0.5, start="2026-01-02T00:00:00"),
        _record("m.capture_corpus", "capture", 10.0, model=1000, start="2026-01-02T00:00:01"),
        _record("m.capture_activations", "capture", 6.0, model=300, start="2026-01-02T00:00:02"),
        _record("m.score_baseline", "capture", 20.0, model=400, start="2026-01-02T00:00:03"),
        _record("m.train_sae", "sae_training", 3.0, sae=4096, start="2026-01-02T00:00:04"),
        _record("build_report", "reporting", 0.2, start="2026-01-02T00:00:05"),
    ]
    for rec in records:
        (newer / f"{rec['node']}.json").write_text(json.dumps(rec))
    return tmp_path, newer


def test_newest_run_and_grouping(run):
    folder, newer = run
    assert newest_run(folder) == newer
    stages = group(read_ledger(newer))
    # score_baseline (ledger stage "capture") is a stage of its own; pipeline order kept
    assert list(stages) == ["data_loading", "capture", "baseline", "sae_training", "reporting"]
    assert [r["node"] for r in stages["capture"]] == ["m.capture_corpus", "m.capture_activations"]


def test_limits_follow_the_budget_model(run):
    recs = {r["node"]: r for r in read_ledger(run[1])}
    corpus = node_limit("m.capture_corpus", recs["m.capture_corpus"], COUNTS, SHAPE)
    # blocks 0..1: 2 x 2000 parameters + 2 x 2 blocks x 16 context x 8 d_model, per token
    assert corpus == {"model_flops": 1000 * (4000 + 512), "sae_flops": 0.0}
    baseline = node_limit("m.score_baseline", recs["m.score_baseline"], COUNTS, SHAPE)
    # the distinct prompt tokens and the generated ones, whole model with the unembedding
    per_token = 2 * 4000 + 2 * 4 * 10 * 8 + 2 * 8 * 50
    assert baseline["model_flops"] == pytest.approx((300 + 20) * per_token)
    sae = node_limit("m.train_sae", recs["m.train_sae"], COUNTS, SHAPE)
    assert sae == {"model_flops": 0.0, "sae_flops": 12.0 * 8 * 64 * 4096}
    assert node_limit("build_report", recs["build_report"], COUNTS, SHAPE) is None
    assert limit_seconds({"model_flops": 3e6, "sae_flops": 4e6}, RATES) == pytest.approx(5.0)
    assert limit_seconds(None, RATES) is None


def test_verdicts_and_stage_sums(run):
    assert verdict(1.5, 1.0) == "within 1.5x"
    assert verdict(1.51, 1.0) == "above 1.5x"
    assert verdict(3.0, None) == "no model work"
    table = rows(read_ledger(run[1]), COUNTS, SHAPE, RATES)
    capture = next(r for r in table if r["label"] == "capture")
    nodes = [r for r in table if r.get("indent") and "capture" in r["label"]]
    assert [n["label"] for n in nodes] == ["capture_corpus", "capture_activations"]
    assert capture["wall_s"] == 16.0 and capture["model_tokens"] == 1300
    assert capture["bare_s"] == pytest.approx(13.0)  # 1300 tokens at 100 tokens/s
    assert capture["limit_s"] == pytest.approx(sum(n["limit_s"] for n in nodes))
    assert capture["x_limit"] == pytest.approx(16.0 / capture["limit_s"])
    text = format_table(table)
    assert "baseline" in text and "no model work" in text and "all nodes" in text


def test_a_node_whose_counts_are_missing_says_so(run):
    counts = {k: v for k, v in COUNTS.items() if k != "generated"}  # baseline not scored yet
    table = rows(read_ledger(run[1]), counts, SHAPE, RATES)
    baseline = next(r for r in table if r["label"] == "baseline")
    assert baseline["limit_s"] is None and baseline["verdict"] == "no limit (generated missing)"


class _CharTokenizer:
    """One token per character (its code point): enough to count agreement."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_greedy_steps_leave_out_what_the_gold_answer_shows():
    """Steps counted: written tokens + the line break, less the tokens agreeing with the gold
    target and the one after them (teacher-forced, free), all within the cap."""
    from sae_reasoning.stage_limits import greedy_steps

    tok = _CharTokenizer()
    # " 12" agrees whole: " ", "1", "2" and the line break after them are all shown
    assert greedy_steps(["12"], [" 12"], tok, 12) == 0
    # " 15" agrees on " 1": 3 written + the break = 4, of which " 1" and "5" are shown
    assert greedy_steps(["15"], [" 12"], tok, 12) == 1
    # only the leading space agrees: 4 written + the break, of which " " and "a" are shown
    assert greedy_steps(["abc"], [" 12"], tok, 12) == 3
    # the cap bounds both sides: 21 written + the break, 12 at most, 2 shown
    assert greedy_steps(["x" * 20], [" 1"], tok, 12) == 10
    # no answer at all (an immediate line break): the pass shows it
    assert greedy_steps([""], [" 1"], tok, 12) == 0
    assert greedy_steps(["12", "abc"], [" 12", " 12"], tok, 12) == 3


def test_causal_limit_counts_the_token_injection_forwards():
    """The token-injection control's sequences run through blocks 0..L: the causal limit
    grows by exactly that forward (capture's FLOPs, no unembedding)."""
    bench = {
        "n_select": 4,
        "n_heldout": 4,
        "tokens_per_example": 12.0,
        "context": 20.0,
        "answer_positions": 3.0,
    }
    causal = {"benchmarks": {"b": bench}, "params": {"top_k": 2}, "circuit_checks": 3}
    counts = {**COUNTS, "causal": causal}
    rec = _record("ns.analyse_features", "causal", 5.0)
    without = node_limit("analyse_features", rec, counts, SHAPE)
    causal.update(injection_tokens=400, injection_ctx=16.0)
    with_injection = node_limit("analyse_features", rec, counts, SHAPE)
    assert with_injection["sae_flops"] == without["sae_flops"]
    extra = budget.capture_flops(SHAPE, 400, 16.0, COUNTS["layer"])
    assert extra > 0
    assert with_injection["model_flops"] == pytest.approx(without["model_flops"] + extra)
