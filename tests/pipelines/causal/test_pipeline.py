"""The causal node on a tiny model with real captured activations; its outputs through the
catalog."""

import json
from pathlib import Path

import networkx as nx
import pytest
import torch
import yaml
from kedro.io import DataCatalog

from sae_reasoning.causal.contexts import CLOSE, OPEN, top_activating_contexts
from sae_reasoning.models.hooks import hook_point
from sae_reasoning.pipelines.causal.nodes import analyse_features
from sae_reasoning.pipelines.causal.pipeline import create_pipeline
from tests.causal.test_splice import random_sae
from tests.causal_run_fixture import (
    CONF,
    captured_run,
    clean_baseline,
    shipped_params,
    tiny_causal_params,
)

HOOK = hook_point(1)


@pytest.fixture(scope="module")
def captured(tiny_model_dirs, tmp_path_factory):
    return captured_run(tiny_model_dirs["llama"], tmp_path_factory.mktemp("acts"), layer=1)


def test_top_activating_contexts_highlight_the_strongest_tokens(captured):
    handle, _, acts = captured
    tok = handle.load("cpu").tokenizer
    sae = random_sae()
    feats = [3, 17]
    ctx = top_activating_contexts(sae, acts, HOOK, feats, tok, n=4, window=5)
    # Reference: every captured token encoded, the largest activations of each feature.
    rows = torch.cat([s.shard(0)["activations"] for s in acts.for_hook(HOOK)])
    f = sae.encode(rows).detach()
    for feat in feats:
        got = ctx[feat]
        assert [c["activation"] for c in got] == pytest.approx(
            f[:, feat].topk(len(got)).values.tolist(), rel=1e-5
        )
        for c in got:
            assert OPEN + c["token"] + CLOSE in c["text"]
            assert c["benchmark"] in {"arith", "logic"}


def test_causal_node_outputs_round_trip_through_the_catalog(captured, tmp_path):
    handle, prompts, acts = captured
    params = tiny_causal_params()["causal"]
    effects, ranking, summary, graph, contexts = analyse_features(
        handle, {HOOK: random_sae()}, prompts, acts, clean_baseline(handle, prompts), params
    )
    s = summary["hook_points"][HOOK]
    assert {"controls", "error_term", "circuit", "significance", "token_injection"} <= set(s)
    assert {
        "delta_logprob_lo",
        "delta_logprob_hi",
        "p_accuracy",
        "q_logprob",
        "q_logit_diff",
        "important",
    } <= set(effects.columns)
    assert summary["selection"]["analysed"] == ["arith", "logic"]
    # Choice questions get the logit difference beside gold log-prob; open answers do not.
    logic = effects[(effects.benchmark == "logic") & (effects.role == "candidate")]
    arith = effects[(effects.benchmark == "arith") & (effects.role == "candidate")]
    assert logic.delta_logit_diff.notna().all() and arith.delta_logit_diff.isna().all()
    assert len(contexts["hook_points"][HOOK]) == 3
    assert isinstance(graph, nx.DiGraph) and "answer" in graph

    # The catalog factories of catalog_causal.yml, pointed at a temporary folder.
    config = yaml.safe_load((CONF / "catalog_causal.yml").read_text())
    for entry in config.values():
        entry["filepath"] = str(tmp_path / Path(entry["filepath"]).name)
    catalog = DataCatalog.from_config(config)
    catalog.save("tiny.circuit", graph)
    catalog.save("tiny.feature_contexts", contexts)
    again = catalog.load("tiny.circuit")
    assert set(again.nodes) == set(graph.nodes) and again.graph[HOOK] == json.loads(
        json.dumps(graph.graph[HOOK])
    )
    preview = json.loads(catalog.get("tiny.circuit").preview())
    assert any(n["id"] == "answer" for n in preview["nodes"])

    # The pipeline names these outputs, so kedro-viz draws them as dataset nodes.
    # (all_outputs: the dashboards node reads `circuit`, so it is no longer a free output)
    assert {"circuit", "feature_contexts"} <= create_pipeline().all_outputs()


def test_causal_node_ablates_at_all_positions(captured):
    """positions: all runs every path (singles, sets, directions, error term, circuit) end to
    end."""
    from sae_reasoning.reporting.causal_section import where as _where

    handle, prompts, acts = captured
    assert shipped_params()["causal"]["positions"] == "answer"
    params = tiny_causal_params(
        positions="all",
        top_k=2,
        n_random_controls=1,
        n_random_sets=1,
        n_boot=50,
        n_context_features=1,
        n_contexts=1,
        modes=["zero", "mean"],
        n_null_features=2,
    )["causal"]
    effects, ranking, summary, graph, contexts = analyse_features(
        handle, {HOOK: random_sae()}, prompts, acts, clean_baseline(handle, prompts), params
    )
    s = summary["hook_points"][HOOK]
    assert s["positions"] == "all" and s["first_position_exempt"] is True
    assert "except position 0" in _where(s)
    # The splice with nothing ablated leaves every rebuilt context as it was.
    assert s["splice_identity_max_abs_logprob_change"] < 1e-4
    assert {
        "direction:0",
        "zero:random_set0",
        "error:zero",
        "zero:all",
        "mean:all",
        "mean:all+error",
    } <= set(effects.condition)
    assert effects.delta_logprob.notna().all()
    assert s["circuit"]["checked_sizes"] or not s["circuit"]["found"]
