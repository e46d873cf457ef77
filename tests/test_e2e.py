"""phase4 end to end through the Kedro CLI, on a tiny configuration: two tiny random models
(Llama and GPT-2 families), small generated benchmarks, small SAEs. Real files, real runs."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.tiny_project import KEDRO, copy_project, kedro, make_tiny_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dirs):
    root = copy_project(tmp_path_factory.mktemp("project"))
    make_tiny_env(root, tiny_model_dirs)
    return root


def test_phase4_end_to_end(project):
    run = kedro(project, "--pipeline=phase4", "--env=tiny")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    out = project / "data" / "08_reporting"
    report = (out / "PHASE4_REPORT.md").read_text()
    for needle in ("## 1. Baseline", "tiny_llama", "tiny_gpt2", "chance", "splice identity", "## 4. Across models",
                   "exact one-sided binomial", "false positives", "Token-driven or reasoning?",
                   "GSM8K-style: reasoning-gym gsm_symbolic"):
        assert needle in report, needle
    causal = json.loads((out / "causal_test_results.json").read_text())
    for model, hook in (("tiny_llama", "blocks.1.hook_resid_post"), ("tiny_gpt2", "blocks.2.hook_resid_post")):
        assert set(causal[model]["baseline_vs_chance"]) == {"gsm8k", "math", "logic"}
        assert causal[model]["selection"]["analysed"] == ["gsm8k", "logic", "math"]
        s = causal[model]["hook_points"][hook]
        assert s["splice_identity_max_abs_logprob_change"] < 1e-4
        assert set(s["clean"]) == {"gsm8k", "math", "logic"}
        ranking = json.loads((out / "feature_importance_ranking.json").read_text())[model][hook]
        assert [r["rank"] for r in ranking] == list(range(1, len(ranking) + 1))
        assert ranking == sorted(ranking, key=lambda r: r["delta_logprob"])
        sae_dir = project / "data" / "06_models" / "sae" / model / hook
        cfg = json.loads((sae_dir / "cfg.json").read_text())
        assert cfg["d_sae"] == 4 * cfg["d_in"] and (sae_dir / "sae_weights.safetensors").exists()
        manifest = json.loads((project / "data/04_feature/activations" / model / "gsm8k" / hook / "manifest.json").read_text())
        assert manifest["complete"] and manifest["n_tokens"] > 0
        corpus = json.loads((project / "data/04_feature/corpus_activations" / model / "corpus" / hook
                             / "manifest.json").read_text())
        assert corpus["complete"] and corpus["n_tokens"] > 0
        # the SAE trained on both sources; the report names them (issue 13: corpus)
        by_source = json.loads((out / "training_summary.json").read_text())[model]["sae_metrics"][hook][
            "training"]["n_train_tokens_by_source"]
        assert by_source["corpus"] > 0 and by_source["benchmarks"] > 0
        probes = causal[model]["probes"]
        assert probes, f"no probe results for {model}"
    training = json.loads((out / "training_summary.json").read_text())
    assert set(training) == {"tiny_llama", "tiny_gpt2"}
    for png in ("baseline_accuracy.png", "feature_effects.png", "tiny_llama_sae_training_curve.png"):
        assert (out / png).stat().st_size > 1000
    for needle in ("## Resources", "trained on corpus", "probe"):
        assert needle in report, needle
    resources = json.loads((out / "resources.json").read_text())
    assert resources, "the resource ledger summary is empty"


def test_second_run_reuses_activations_and_saes(project):
    run = kedro(project, "--pipeline=phase4", "--env=tiny")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "reusing activations" in log
    assert "reusing SAE" in log
    assert "baseline tiny_llama: reusing" in log


def test_device_slot_runner_runs_namespaces_in_workers(project):
    run = kedro(project, "--pipeline=phase4", "--env=tiny", "--runner=sae_reasoning.runner.DeviceSlotRunner")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    logs = list((project / "logs").glob("*/tiny_llama.log"))
    assert logs and "reusing" in logs[-1].read_text()


def test_kedro_viz_build_shows_each_model_namespace(project):
    # `kedro viz build` has no --env; Kedro reads KEDRO_ENV instead.
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "KEDRO_ENV": "tiny"}
    done = subprocess.run([KEDRO, "viz", "build"], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    main = json.loads((project / "build" / "api" / "main").read_text())
    assert {"tiny_llama", "tiny_gpt2"} <= set(main["modular_pipelines"])
    assert {p["id"] for p in main["pipelines"]} >= {"phase4", "validate", "capture", "causal"}
