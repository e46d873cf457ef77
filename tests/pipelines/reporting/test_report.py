"""The report from one tiny model's real causal results: statistics, controls, circuit, contexts."""

import pickle

from sae_reasoning.models.hooks import hook_point
from sae_reasoning.pipelines.causal.nodes import analyse_features
from sae_reasoning.pipelines.reporting.nodes import build_report, report_section
from sae_reasoning.pipelines.reporting.pipeline import create_pipeline
from tests.causal.test_splice import random_sae
from tests.causal_run_fixture import captured_run, clean_baseline, tiny_causal_params


def test_report_shows_cis_controls_circuit_and_contexts(tiny_model_dirs, tmp_path):
    handle, prompts, acts = captured_run(tiny_model_dirs["gpt2"], tmp_path, layer=2)
    params = tiny_causal_params(n_context_features=2, n_null_features=4)["causal"]
    baseline = clean_baseline(handle, prompts)
    effects, ranking, summary, _graph, contexts = analyse_features(
        handle, {hook_point(2): random_sae()}, prompts, acts, baseline, params
    )
    section = report_section(baseline, {}, acts, effects, ranking, summary, contexts, None)
    inputs = {"tiny": pickle.loads(pickle.dumps(section))}  # as the catalog hands it over
    md, _training, causal, _ranking, ctx, *figs, resources = build_report(prompts, **inputs)
    assert resources["nodes"] == [] and "No resource ledger records" in md  # no ledger given
    for needle in (
        "[95% CI]",
        "McNemar",
        "Benjamini-Hochberg",
        "norm-matched random direction",
        "random live features, draw 2",
        "SAE error term",
        "circuit",
        "⟦",
        # what each claim rests on
        "Wilson 95% CI",
        "exact one-sided binomial test",
        "rate of the best constant answer",
        "Δ(top-K) − Δ(control)",
        "called important (false positives)",
        "Null of random live features",
        "Token-driven or reasoning?",
        "Marks et al.'s default",
        "error term kept everywhere",
        "of alive features",
        "analysed arith, logic",
        "Δ logit diff",
    ):
        assert needle in md, needle
    assert "above chance | gold" in md and "| arith |" in md and "Not in this report" not in md
    # Per-benchmark effects, dashboard links, and the circuit's sparsity verdict against the
    # parameter.
    hook = hook_point(2)
    assert (
        "Per benchmark (zero ablation" in md
        and "| arith (n " in md
        and "paired cluster bootstrap, 100 resamples" in md
    )
    assert f"](features/tiny/{hook}/index.html)" in md and f"](features/tiny/{hook}/feature_" in md
    circ = summary["hook_points"][hook]["circuit"]
    assert circ["sparse_fraction"] == params["circuit_sparse_fraction"]
    # a random SAE's circuit needs most of its few alive features (70% here): not sparse
    assert (
        circ["found"]
        and circ["share_of_alive"] > circ["sparse_fraction"]
        and circ["sparse"] is False
    )
    assert f"of alive features; **not sparse**: above {circ['sparse_fraction']:.1%}" in md
    # A model whose namespace failed (the runner runs the report on what finished) is named.
    md = build_report(prompts, {"tiny": {}, "broken": {}}, **inputs)[0]
    assert "**Not in this report: `broken`**" in md and "Models: `tiny`." in md
    assert ctx == {"tiny": contexts["hook_points"]}
    assert len(figs) == 3  # baseline, effects, and a placeholder: no planted-dictionary check given
    # The pipeline reads each model's contexts and writes the combined JSON.
    p = create_pipeline(["tiny"])
    assert "tiny.feature_contexts" in p.inputs() and "top_activating_contexts" in p.outputs()
    assert "resource_ledger" in p.inputs() and "resources_summary" in p.outputs()
    # ... inside the model's namespace, handing the report an undotted, persisted section.
    (section_node,) = [n for n in p.nodes if n.name == "tiny.report_section"]
    assert section_node.namespace == "tiny" and section_node.outputs == ["tiny_report_section"]
    assert "tiny_report_section" in p.all_outputs() and "tiny_report_section" not in p.outputs()


def test_report_shows_spliced_sae_metrics_and_the_planted_dictionary_check():
    from sae_reasoning.reporting.report import markdown

    spliced = {
        "n_prompts": 32,
        "n_predicted_tokens": 1234,
        "ce_loss_score": 0.91,
        "ce_loss_without_sae": 1.5,
        "ce_loss_with_sae": 1.8,
        "ce_loss_with_ablation": 4.8,
        "kl_div_with_sae": 0.3,
        "kl_div_with_ablation": 3.1,
    }
    planted = {
        "fraction_recovered": 0.98,
        "mean_best_cosine": 0.97,
        "cosine_threshold": 0.9,
        "passed": True,
        "target": ">= 90% of planted directions at cosine >= 0.9",
        "best_cosine": [0.97] * 10,
        "data": {
            "n_features": 256,
            "d_in": 64,
            "active_per_token": 5,
            "coefficients": "uniform [0.5, 1.5]",
            "noise_std": 0.01,
            "n_tokens": 100000,
        },
        "sae": {"architecture": "relu", "d_sae": 512, "steps": 200},
    }
    training = {
        "m": {
            "activations": {},
            "sae_metrics": {
                "blocks.1.hook_resid_post": {
                    "l0": 12.0,
                    "explained_variance": 0.8,
                    "spliced": spliced,
                    "planted_dictionary": planted,
                }
            },
        }
    }
    md = markdown(
        __import__("pandas").DataFrame(
            columns=["model", "benchmark", "correct", "chance", "gold_logprob"]
        ),
        training,
        {},
        {},
        {},
    )
    assert (
        "CE loss recovered 0.91 (CE clean 1.500, with SAE 1.800, residual zero-ablated 4.800)" in md
    )
    assert "recovered **98.0%** of the planted directions at cosine >= 0.9" in md and "met)" in md
    assert "planted_dictionary.png" in md
