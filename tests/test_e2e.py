"""phase4 end to end through the Kedro CLI, on a tiny configuration: two tiny random models
(Llama and GPT-2 families), small generated benchmarks, small SAEs. Real files, real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.tiny_project import KEDRO, TINY_MODELS, copy_project, kedro, make_tiny_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dirs):
    root = copy_project(tmp_path_factory.mktemp("project"))
    make_tiny_env(root, tiny_model_dirs)
    return root


def test_prepare_names_every_model_and_its_folder(project, tiny_model_dirs):
    """`make run`'s set-up step on a project: each configured model, where it loads from
    (the tiny models are plain HF folders: nothing to convert)."""
    run = subprocess.run(
        [sys.executable, "-m", "sae_reasoning.models.prepare", "--env", "tiny"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for name, (family, _) in TINY_MODELS.items():
        assert f"{name}: {tiny_model_dirs[family]} (" in run.stdout


def test_phase4_end_to_end(project):
    run = kedro(project, "--pipeline=phase4", "--env=tiny")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    out = project / "data" / "08_reporting"
    report = (out / "PHASE4_REPORT.md").read_text()
    for needle in (
        "## 1. Baseline",
        "tiny_llama",
        "tiny_gpt2",
        "chance",
        "splice identity",
        "numerical floor: per-example |Δ| within",
        "## 4. Across models",
        "exact one-sided binomial",
        "false positives",
        "Token-driven or reasoning?",
        "GSM8K-style: reasoning-gym gsm_symbolic",
    ):
        assert needle in report, needle
    causal = json.loads((out / "causal_test_results.json").read_text())
    for model, hook in (
        ("tiny_llama", "blocks.1.hook_resid_post"),
        ("tiny_gpt2", "blocks.2.hook_resid_post"),
    ):
        assert set(causal[model]["baseline_vs_chance"]) == {"gsm8k", "math", "logic"}
        assert causal[model]["selection"]["analysed"] == ["gsm8k", "logic", "math"]
        s = causal[model]["hook_points"][hook]
        assert s["splice_identity_max_abs_logprob_change"] < 1e-4
        floor = s["numerical_floor"]
        assert floor["batch_sizes"][1] == 1 and floor["factor"] == 2.0
        assert floor["floor"]["logprob"] == 2.0 * max(
            floor["rebatched"]["logprob"], floor["identity"]["logprob"]
        )
        assert set(s["clean"]) == {"gsm8k", "math", "logic"}
        ranking = json.loads((out / "feature_importance_ranking.json").read_text())[model][hook]
        assert [r["rank"] for r in ranking] == list(range(1, len(ranking) + 1))
        assert ranking == sorted(ranking, key=lambda r: r["delta_logprob"])
        sae_dir = project / "data" / "06_models" / "sae" / model / hook
        cfg = json.loads((sae_dir / "cfg.json").read_text())
        assert cfg["d_sae"] == 4 * cfg["d_in"] and (sae_dir / "sae_weights.safetensors").exists()
        manifest = json.loads(
            (
                project / "data/04_feature/activations" / model / "gsm8k" / hook / "manifest.json"
            ).read_text()
        )
        assert manifest["complete"] and manifest["n_tokens"] > 0
        corpus = json.loads(
            (
                project
                / "data/04_feature/corpus_activations"
                / model
                / "corpus"
                / hook
                / "manifest.json"
            ).read_text()
        )
        assert corpus["complete"] and corpus["n_tokens"] > 0
        # the SAE trained on both sources; the report names them (issue 13: corpus)
        by_source = json.loads((out / "training_summary.json").read_text())[model]["sae_metrics"][
            hook
        ]["training"]["n_train_tokens_by_source"]
        assert by_source["corpus"] > 0 and by_source["benchmarks"] > 0
        probes = causal[model]["probes"]
        assert probes, f"no probe results for {model}"
        site = out / "features" / model / hook  # feature dashboards: a page per analysed feature
        pages = {p.name for p in site.glob("feature_*.html")}
        assert (site / "index.html").is_file() and {
            f"feature_{r['feature']}.html" for r in ranking
        } <= pages
    training = json.loads((out / "training_summary.json").read_text())
    assert set(training) == {"tiny_llama", "tiny_gpt2"}
    for png in (
        "baseline_accuracy.png",
        "feature_effects.png",
        "tiny_llama_sae_training_curve.png",
    ):
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
    run = kedro(
        project, "--pipeline=phase4", "--env=tiny", "--runner=kedro_device_runner.DeviceSlotRunner"
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    logs = list((project / "logs").glob("*/tiny_llama.log"))
    assert logs and "reusing" in logs[-1].read_text()


def test_kedro_viz_build_shows_each_model_namespace(project):
    # `kedro viz build` has no --env; Kedro reads KEDRO_ENV instead.
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "KEDRO_ENV": "tiny"}
    done = subprocess.run(
        [KEDRO, "viz", "build"], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    main = json.loads((project / "build" / "api" / "main").read_text())
    assert {"tiny_llama", "tiny_gpt2"} <= set(main["modular_pipelines"])
    assert {p["id"] for p in main["pipelines"]} >= {"phase4", "validate", "capture", "causal"}


def test_kedro_viz_build_with_previews(project):
    """Layers on every dataset, a stage tag on every node, previews of tables, plots, the
    circuit and the report (issue 15). kedro-viz exits 0 even when the build fails."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "KEDRO_ENV": "tiny"}
    done = subprocess.run(
        [KEDRO, "viz", "build", "--include-previews"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "Success" in log and "Failed to build" not in log, log[-3000:]
    api = project / "build" / "api"
    main = json.loads((api / "main").read_text())
    data = {n["name"]: n for n in main["nodes"] if n["type"] == "data"}
    assert {name for name, n in data.items() if not n.get("layer")} == set()
    assert {n["name"] for n in main["nodes"] if n["type"] == "task" and not n.get("tags")} == set()
    assert {t["id"] for t in main["tags"]} >= {
        "data_loading",
        "capture",
        "sae_training",
        "causal",
        "reporting",
    }
    details = {name: json.loads((api / "nodes" / n["id"]).read_text()) for name, n in data.items()}
    expected = {
        "prompts": "TablePreview",
        "examples": "TablePreview",
        "feature_effects_plot": "ImagePreview",
        "tiny_llama.circuit": "JSONPreview",
        "phase4_report": "HTMLPreview",
        "tiny_llama.sae": "TablePreview",
        "tiny_llama.activations": "TablePreview",
    }
    for name, kind in expected.items():
        assert details[name].get("preview_type") == kind and details[name].get("preview"), (
            name,
            details[name],
        )
    prompts = details["prompts"]["preview"]
    assert "choices" in prompts["columns"] and prompts["data"]
    assert "## 1. Baseline" in details["phase4_report"]["preview"]
    assert "nodes" in json.loads(details["tiny_llama.circuit"]["preview"])


def test_starter_notebook_runs_on_the_tiny_outputs(project):
    """notebooks/explore_results.ipynb, executed headless on this project with env `tiny`."""
    import shutil

    import yaml

    from tests.notebook_run import cell_with, execute, texts
    from tests.tiny_project import REPO, kedro_env

    if not (project / "data" / "08_reporting" / "PHASE4_REPORT.md").exists():  # run alone (-k)
        run = kedro(project, "--pipeline=phase4", "--env=tiny")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (project / "notebooks").mkdir(exist_ok=True)
    notebook = shutil.copy(REPO / "notebooks" / "explore_results.ipynb", project / "notebooks")
    nb = execute(
        notebook, project / "notebooks", {"project_path": str(project), "env": "tiny"}, kedro_env()
    )

    for cell in nb.cells:
        assert not [o for o in cell.get("outputs", []) if o.output_type == "error"], cell.source
        assert "Traceback" not in texts(cell), (
            cell.source
        )  # kedro.ipython shows errors through rich
    assert "env 'tiny'" in texts(cell_with(nb, "models = list("))
    for needle in ("baseline_table", "sae_table", "ranking_table", "probes_table"):
        out = texts(cell_with(nb, needle))
        assert "tiny_llama" in out and "tiny_gpt2" in out, needle
    assert all(
        f"Δ {b}" in texts(cell_with(nb, "ranking_table")) for b in ("gsm8k", "math", "logic")
    )
    plot = cell_with(nb, "plot_per_benchmark_effects")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs), (
        "the effects plot drew nothing"
    )
    assert "capture" in texts(cell_with(nb, "resources_table"))

    dashboard = texts(cell_with(nb, "dashboard_page"))
    catalog = [
        k
        for f in (project / "conf" / "base").glob("catalog*.yml")
        for k in yaml.safe_load(f.read_text()) or {}
    ]
    if any("feature_dashboards" in k for k in catalog):  # the dashboards node is in the pipeline
        page = dashboard.split("Feature dashboard: ")[1].split()[0]
        assert (
            page.endswith(".html")
            and (project / "data" / "08_reporting" / "features").as_posix() in page
        )
        assert "<iframe" in dashboard and os.path.isfile(page), dashboard[-2000:]
    else:
        assert "No dashboard for feature" in dashboard


def test_tracked_run_records_params_metrics_and_report(project, tmp_path):
    """SAE_REASONING_TRACKING=1 (issue 15, runs you can find again): kedro-mlflow and
    MlflowReportHook record the run in a temporary SQLite store: the nodes' parameters, the
    report's key metrics (equal to the report's JSON) and the report and plots as artifacts."""
    from pathlib import Path

    import yaml

    from tests.tiny_project import kedro_env

    try:
        import mlflow
    except ImportError:
        pytest.fail(
            "mlflow missing: install the `tracking` extra (`make tracking`; `make test` does)"
        )
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    conf = project / "conf" / "tiny" / "mlflow.yml"
    conf.write_text(yaml.safe_dump({"server": {"mlflow_tracking_uri": store}}))
    try:
        run = subprocess.run(
            [KEDRO, "run", "--pipeline=phase4", "--env=tiny"],
            cwd=project,
            env={**kedro_env(), "SAE_REASONING_TRACKING": "1"},
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
    finally:
        conf.unlink()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    # one run in the whole store: no stray runs (e.g. opened by node hooks)
    (tracked,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert client.get_experiment(tracked.info.experiment_id).name == "sae_reasoning"
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "phase4"
    params = tracked.data.params
    assert params["causal.top_k"] == "4" and params["sae_training.expansion_factor"] == "4"
    assert params["models.tiny_llama.layers"] == "[1]"

    out = project / "data" / "08_reporting"
    training = json.loads((out / "training_summary.json").read_text())
    causal = json.loads((out / "causal_test_results.json").read_text())
    metrics = tracked.data.metrics
    for model, hook in (
        ("tiny_llama", "blocks.1.hook_resid_post"),
        ("tiny_gpt2", "blocks.2.hook_resid_post"),
    ):
        sae = training[model]["sae_metrics"][hook]
        assert metrics[f"{model}/{hook}/explained_variance"] == pytest.approx(
            sae["explained_variance"]
        )
        assert metrics[f"{model}/{hook}/l0"] == pytest.approx(sae["l0"])
        assert metrics[f"{model}/{hook}/ce_loss_recovered"] == pytest.approx(
            sae["spliced"]["ce_loss_recovered"]
        )
        h = causal[model]["hook_points"][hook]
        assert metrics[f"{model}/{hook}/all_features_delta_logprob"] == pytest.approx(
            h["all_features_zero"]["delta_logprob"]
        )
        assert metrics[f"{model}/{hook}/top_k_delta_logprob"] == pytest.approx(
            h["controls"]["top_k_set"]["delta_logprob"]
        )
        for bench, b in causal[model]["baseline_vs_chance"].items():
            assert metrics[f"{model}/{bench}/baseline_accuracy"] == pytest.approx(b["accuracy"])

    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    assert {
        "PHASE4_REPORT.md",
        "training_summary.json",
        "causal_test_results.json",
        "plots",
    } <= artifacts
    plots = {a.path for a in client.list_artifacts(tracked.info.run_id, "plots")}
    assert {"plots/feature_effects.png", "plots/baseline_accuracy.png"} <= plots
    report = client.download_artifacts(tracked.info.run_id, "PHASE4_REPORT.md", str(tmp_path))
    assert Path(report).read_text() == (out / "PHASE4_REPORT.md").read_text()
