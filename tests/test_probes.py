"""Linear probes beside the ablations: planted signals found, null not called, overlap statistics
by hand, skips and errors, and the Kedro node on a tiny model's real capture store."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from kedro.io import DataCatalog
from scipy.stats import hypergeom, spearmanr

from sae_reasoning.activations import ActivationSet
from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.models.hooks import hook_point
from sae_reasoning.probes import ProbeConfig, probe
from sae_reasoning.probes_data import answer_rows, labelled_examples
from sae_reasoning.probes_overlap import compare_with_ranking
from sae_reasoning.reporting.probes_section import probes_section

CONF = Path(__file__).resolve().parents[1] / "conf" / "base"
CFG = ProbeConfig(n_boot=500)


def _splits(n):
    return np.where(np.arange(n) % 2 == 0, "select", "heldout"), np.array(
        [f"ex{i}" for i in range(n)]
    )


def test_residual_probe_finds_a_label_planted_in_one_direction():
    rng = np.random.default_rng(0)
    n, d = 240, 24
    X = rng.normal(size=(n, d))
    direction = rng.normal(size=d)
    y = (X @ direction > 0.3).astype(int)  # imbalanced on purpose: majority is not 50%
    split, clusters = _splits(n)
    r = probe("residual", X, y, split, clusters, CFG)
    assert r["accuracy"] > 0.85 and r["accuracy"] > r["majority_accuracy"] + 0.2
    assert r["beats_majority"] and r["p"] < 0.05 and r["p"] == r["p_mcnemar"]
    assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]
    assert r["gain_ci"][0] > 0


def test_sparse_probe_puts_its_top_weight_on_the_planted_feature():
    rng = np.random.default_rng(1)
    n, d_sae, planted = 240, 60, 37
    codes = np.maximum(rng.normal(size=(n, d_sae)) - 1.0, 0)  # sparse, nonnegative, uninformative
    y = rng.integers(0, 2, n)
    codes[:, planted] = y * rng.uniform(1.0, 2.0, n)  # fires exactly on label 1
    split, clusters = _splits(n)
    r = probe("sae_codes", codes, y, split, clusters, CFG, feature_ids=np.arange(d_sae))
    assert r["beats_majority"] and r["p"] < 0.05
    assert r["weights"][0][0] == planted and r["weights"][0][1] > 0
    assert r["n_nonzero"] < d_sae  # L1: most features get no weight


def test_null_labels_are_not_called_beating_the_majority():
    calls = 0
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        X = rng.normal(size=(120, 16))
        y = rng.integers(0, 2, 120)  # independent of X
        split, clusters = _splits(120)
        calls += probe("residual", X, y, split, clusters, ProbeConfig(n_boot=200, seed=seed))[
            "beats_majority"
        ]
    # Each call is a level-0.05 test: 2+ calls of 8 has probability < 6% under the null.
    assert calls <= 1


def test_clustered_examples_use_the_cluster_test():
    rng = np.random.default_rng(2)
    n = 120
    X = rng.normal(size=(n, 8))
    y = (X[:, 0] > 0).astype(int)
    split, _ = _splits(n)
    clusters = np.array([f"t{i // 4}" for i in range(n)])  # templates of 4 examples
    r = probe("residual", X, y, split, clusters, CFG)
    assert r["p"] == r["p_cluster_sign_flip"] and "cluster" in r["test"]
    assert r["n_heldout_clusters"] == 30


def test_single_class_and_empty_heldout_are_skipped_with_a_reason():
    X = np.random.default_rng(3).normal(size=(20, 4))
    split, clusters = _splits(20)
    one = probe("residual", X, np.ones(20, int), split, clusters, CFG)
    assert "one class" in one["skipped"]
    y = np.arange(20) % 3 == 0
    none = probe("residual", X, y.astype(int), np.full(20, "select"), clusters, CFG)
    assert "no heldout" in none["skipped"]


def test_overlap_statistics_on_a_hand_made_ranking():
    # Probe weights: features 5, 9, 2, 40 (by |weight|); causal ranking: 9, 5, 7, 11 (7 important,
    # no weight).
    sparse = {"weights": [[5, 0.9], [9, -0.7], [2, 0.4], [40, 0.1]]}
    ranking = [
        {"rank": 1, "feature": 9, "delta_logprob": -0.5, "important": True},
        {"rank": 2, "feature": 5, "delta_logprob": -0.3, "important": False},
        {"rank": 3, "feature": 7, "delta_logprob": -0.2, "important": True},
        {"rank": 4, "feature": 11, "delta_logprob": -0.1, "important": False},
    ]
    live = np.arange(50)
    y = np.array([0, 1] * 10)
    codes = np.zeros((20, 60))
    codes[:, 7] = y * 3.0  # feature 7 alone separates the held-out labels
    o = compare_with_ranking(sparse, ranking, live, 3, codes, y)
    t = o["top_k_overlap"]
    assert o["probe_top"] == [5, 9, 2] and o["causal_top"] == [9, 5, 7]
    assert t["overlap"] == 2 and t["features"] == [5, 9] and t["population"] == 50
    assert t["p_hypergeometric"] == pytest.approx(hypergeom.sf(1, 50, 3, 3))
    assert t["expected_at_random"] == pytest.approx(9 / 50)
    rho = spearmanr([0.7, 0.9, 0.0, 0.0], [0.5, 0.3, 0.2, 0.1]).statistic
    assert (
        o["rank_correlation"]["spearman"] == pytest.approx(rho) and o["rank_correlation"]["n"] == 4
    )
    assert [f["feature"] for f in o["predicts_not_causal"]] == [5]  # top-k, tested, not important
    assert [f["feature"] for f in o["both"]] == [9]
    assert [u["feature"] for u in o["untested"]] == [2]  # never ablated: no finding
    # 7 is important with zero weight, but predictive alone: redundant, not "not predictive".
    assert o["causal_not_predictive"] == [] and [f["feature"] for f in o["causal_redundant"]] == [7]
    assert o["causal_redundant"][0]["auc_alone"] == 1.0
    codes[:, 7] = 1.0  # now constant: not predictive alone either
    o = compare_with_ranking(sparse, ranking, live, 3, codes, y)
    assert [f["feature"] for f in o["causal_not_predictive"]] == [7] and o["causal_redundant"] == []


def test_bad_parameters_and_missing_baseline_rows_name_the_culprit():
    with pytest.raises(ValueError, match="probes.Cs"):
        ProbeConfig.from_params({"Cs": [0.1, -1]})
    with pytest.raises(ValueError, match="unknown parameter"):
        ProbeConfig.from_params({"topk": 3})
    prompts = pd.DataFrame(
        {"id": ["a", "b", "c"], "benchmark": "arith", "split": ["select", "heldout", "select"]}
    )
    baseline = pd.DataFrame({"id": ["a"], "correct": [True], "n_answer_tokens": [1]})
    with pytest.raises(
        ValueError, match=r"probes tiny: 2 example.*tiny.baseline_scores.*\['b', 'c'\]"
    ):
        labelled_examples("tiny", prompts, baseline)


# -- the node on a tiny model's real capture store ----------------------------------------

HOOK = hook_point(1)


@pytest.fixture(scope="module")
def captured(tiny_model_dirs, tmp_path_factory):
    from tests.prompts_fixture import tiny_prompts

    handle = ModelHandle(ModelSpec("tiny", str(tiny_model_dirs["llama"]), converted_cache=None))
    prompts = tiny_prompts(n_open=16, n_choice=8)
    root = tmp_path_factory.mktemp("acts")
    CaptureJob(handle, prompts, layers=[1]).run(root)
    return handle, prompts, ActivationSet.open(root)


def _baseline(handle, prompts):
    from sae_reasoning.scoring import encode_prompts, score_conditions

    lm = handle.load("cpu")
    clean = score_conditions(lm, encode_prompts(lm.tokenizer, prompts), progress=None)["clean"]
    # A random model answers (almost) nothing: give `correct` both classes in both splits.
    return clean.assign(correct=(clean["row"] // 2) % 2 == 0)


def test_answer_rows_are_the_residual_at_the_last_prompt_token(captured):
    from sae_reasoning.scoring import encode_prompts

    handle, prompts, acts = captured
    lm = handle.load("cpu")
    rows = answer_rows(
        "tiny", acts, HOOK, labelled_examples("tiny", prompts, _baseline(handle, prompts))
    )
    encoded = {
        e.row: (b.prefix, e.question)
        for b in encode_prompts(lm.tokenizer, prompts)
        for e in b.examples
    }
    assert sorted(rows.rows.tolist()) == list(range(len(prompts)))
    for i, row in enumerate(rows.rows[:6]):
        prefix, question = encoded[int(row)]
        ids = torch.tensor([prefix + question])
        with torch.no_grad():
            hidden = lm.model(ids, output_hidden_states=True).hidden_states[2][
                0, -1
            ]  # after block 1
        assert np.allclose(rows.resid[i], hidden.numpy(), atol=1e-4)


def test_train_probes_node_on_a_real_capture_store(captured, tmp_path):
    from sae_reasoning.pipelines.causal.nodes import train_probes
    from sae_reasoning.pipelines.causal.pipeline import create_pipeline
    from tests.causal.test_splice import random_sae

    handle, prompts, acts = captured
    params = yaml.safe_load((CONF / "parameters_causal.yml").read_text())["probes"]
    params.update(n_boot=200)
    ranking = {
        "hook_points": {
            HOOK: [
                {"rank": i + 1, "feature": f, "delta_logprob": -0.1 / (i + 1), "important": i == 0}
                for i, f in enumerate([3, 17, 40])
            ]
        }
    }
    summary = {"hook_points": {HOOK: {"benchmarks": ["arith", "logic"]}}}
    out = train_probes(
        handle,
        {HOOK: random_sae()},
        prompts,
        acts,
        _baseline(handle, prompts),
        ranking,
        summary,
        params,
    )
    h = out["hook_points"][HOOK]
    assert h["n_examples"] == len(prompts) and h["d_sae"] == 256
    for target in ("correct", "benchmark"):
        for rep in ("residual", "sae_codes"):
            r = h["targets"][target][rep]
            assert "skipped" not in r, r
            assert r["n_select"] + r["n_heldout"] == len(prompts) and 0 <= r["accuracy"] <= 1
    assert h["overlap"]["causal_top"] == [3, 17, 40]

    config = yaml.safe_load((CONF / "catalog_causal.yml").read_text())["{model}.probe_results"]
    config["filepath"] = str(tmp_path / "probe_results.json")
    catalog = DataCatalog.from_config({"tiny.probe_results": config})
    catalog.save("tiny.probe_results", out)
    again = catalog.load("tiny.probe_results")
    assert again == json.loads(json.dumps(out))
    text = "\n".join(probes_section({"tiny": again}))
    assert "| tiny | blocks.1.hook_resid_post | correct" in text and "share **" in text
    assert "probe_results" in create_pipeline().outputs()


def test_one_benchmark_skips_the_benchmark_target_and_no_ranking_skips_the_overlap(captured):
    from sae_reasoning.probes import probe_hook
    from tests.causal.test_splice import random_sae

    handle, prompts, acts = captured
    rows = answer_rows(
        "tiny", acts, HOOK, labelled_examples("tiny", prompts, _baseline(handle, prompts))
    )
    arith = rows.take(rows.benchmark == "arith")
    h = probe_hook(arith, random_sae(), None, None, ProbeConfig(n_boot=100))
    assert "one class" in h["targets"]["benchmark"]["residual"]["skipped"]
    assert "one class" in h["targets"]["benchmark"]["sae_codes"]["skipped"]
    assert "skipped" not in h["targets"]["correct"]["residual"]
    assert h["overlap"] == {"skipped": "no causal ranking at this hook point"}
    assert "analysed none" in h["targets"]["correct"]["examples"]
    text = "\n".join(probes_section({"tiny": {"hook_points": {HOOK: h}}}))
    assert "skipped: one class" in text and "not compared: no causal ranking" in text
