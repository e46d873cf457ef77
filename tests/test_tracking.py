"""Runs you can find again: the log file every run writes, and tracking switched off by
default (no MLflow run, store or import from the project). The tracked run itself is checked
end to end in tests/test_e2e.py (test_tracked_run_records_params_metrics_and_report)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from sae_reasoning.tracking import ENV_VAR, key_metrics, tracking_enabled
from tests.tiny_project import KEDRO, copy_project, kedro_env, make_tiny_env

HOOK = "blocks.1.hook_resid_post"


def test_key_metrics_are_the_reports_headline_numbers():
    training = {
        "m": {
            "sae_metrics": {
                HOOK: {
                    "explained_variance": 0.85,
                    "fvu": 0.15,
                    "l0": 79.0,
                    "spliced": {"ce_loss_recovered": 0.99},
                }
            }
        }
    }
    causal = {
        "m": {
            "baseline_vs_chance": {
                "gsm8k": {"accuracy": 0.25, "chance": 0.1},
                "logic": {"accuracy": 0.5, "chance": 0.5},
            },
            "hook_points": {
                HOOK: {
                    "all_features_zero": {"delta_logprob": -4.9, "delta_accuracy": -0.38},
                    # a choice-only field left empty must not become a metric
                    "controls": {"top_k_set": {"delta_logprob": -1.8, "delta_accuracy": None}},
                }
            },
        }
    }
    assert key_metrics(training, causal) == {
        f"m/{HOOK}/explained_variance": 0.85,
        f"m/{HOOK}/fvu": 0.15,
        f"m/{HOOK}/l0": 79.0,
        f"m/{HOOK}/ce_loss_recovered": 0.99,
        "m/gsm8k/baseline_accuracy": 0.25,
        "m/gsm8k/chance": 0.1,
        "m/logic/baseline_accuracy": 0.5,
        "m/logic/chance": 0.5,
        f"m/{HOOK}/all_features_delta_logprob": -4.9,
        f"m/{HOOK}/all_features_delta_accuracy": -0.38,
        f"m/{HOOK}/top_k_delta_logprob": -1.8,
    }
    # a model whose causal stage was skipped still gets its SAE metrics
    assert key_metrics(training, {"m": {"hook_points": {}}}) == {
        f"m/{HOOK}/explained_variance": 0.85,
        f"m/{HOOK}/fvu": 0.15,
        f"m/{HOOK}/l0": 79.0,
        f"m/{HOOK}/ce_loss_recovered": 0.99,
    }


def test_tracking_switch():
    assert tracking_enabled({}) is False
    assert tracking_enabled({ENV_VAR: "0"}) is False
    with pytest.raises(ValueError, match=ENV_VAR):
        tracking_enabled({ENV_VAR: "maybe"})
    # with the `tracking` extra (`make test` installs it); without it, a clear error
    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(RuntimeError, match=r"pip install -e '\.\[tracking\]'"):
            tracking_enabled({ENV_VAR: "1"})
    else:
        assert tracking_enabled({ENV_VAR: "1"}) is True


def test_tracking_off_the_project_does_not_import_mlflow():
    code = (
        "import sys, sae_reasoning.settings as s; "
        "print('mlflow' in sys.modules, s.HOOKS[-1].__class__.__name__, "
        "s.DISABLE_HOOKS_FOR_PLUGINS)"
    )
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    imported, last_hook, disabled = out.stdout.split(" ", 2)
    assert imported == "False" and last_hook != "MlflowReportHook"
    assert "kedro_mlflow" in disabled


def test_tracking_on_registers_the_tracking_hooks():
    code = "import sae_reasoning.settings as s; print(*(type(h).__name__ for h in s.HOOKS))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, ENV_VAR: "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # kedro-mlflow's hook is registered here (its entry point stays off), ours after it
    assert out[-2:] == ["MainProcessMlflowHook", "MlflowReportHook"]


@pytest.mark.slow
def test_a_run_writes_its_log_file_and_no_tracking_store(tmp_path, tiny_model_dirs):
    project = copy_project(tmp_path / "project")
    make_tiny_env(project, tiny_model_dirs)
    env = {k: v for k, v in kedro_env().items() if k != ENV_VAR}
    run = subprocess.run(
        [KEDRO, "run", "--pipeline=data_loading", "--env=tiny"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Logging error" not in run.stderr  # the file handler's folder exists in any copy
    log = (project / "info.log").read_text()
    assert "Using 'conf/logging.yml' as logging configuration" in log
    for node in ("normalize_gsm8k", "select_examples", "make_prompts"):
        assert f"Running node: {node}" in log, node
    assert "Pipeline execution completed successfully" in log
    # tracking off: kedro-mlflow (installed for the tests) opened no run and made no store
    assert not (project / "data" / "09_tracking" / "mlflow.db").exists()
    assert not (project / "mlruns").exists() and not (project / "mlflow.db").exists()


def _report_project(root):
    """Report outputs on disk as a run leaves them, and their catalog."""
    import matplotlib
    from kedro.io import DataCatalog
    from kedro.pipeline import Node, Pipeline

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = root / "data" / "08_reporting"
    catalog = DataCatalog.from_config(
        {
            "phase4_report": {
                "type": "text.TextDataset",
                "filepath": str(out / "PHASE4_REPORT.md"),
            },
            "training_summary": {
                "type": "json.JSONDataset",
                "filepath": str(out / "training_summary.json"),
            },
            "causal_test_results": {
                "type": "json.JSONDataset",
                "filepath": str(out / "causal_test_results.json"),
            },
            "curve_plot": {
                "type": "matplotlib.MatplotlibDataset",
                "filepath": str(out / "m_curve.png"),
            },
        }
    )
    catalog.save("phase4_report", "# Report\n")
    catalog.save(
        "training_summary", {"m": {"sae_metrics": {HOOK: {"explained_variance": 0.8, "l0": 12.0}}}}
    )
    catalog.save(
        "causal_test_results", {"m": {"baseline_vs_chance": {"gsm8k": {"accuracy": 0.25}}}}
    )
    fig = plt.figure()
    catalog.save("curve_plot", fig)
    plt.close(fig)
    catalog["parameters"] = {"causal": {"top_k": 4}, "models": {"m": {"layers": [1]}}}
    outputs = ["phase4_report", "training_summary", "causal_test_results", "curve_plot"]
    return catalog, Pipeline([Node(lambda: None, None, outputs, name="build_report")])


def test_report_hook_records_a_run_without_kedro_mlflow(tmp_path, monkeypatch):
    """The hook's own run (no kedro-mlflow): parameters, metrics and files, in the store
    MLFLOW_TRACKING_URI names."""
    try:
        import mlflow
    except ImportError:
        pytest.fail(
            "mlflow missing: install the `tracking` extra (`make tracking`; `make test` does)"
        )
    from sae_reasoning.tracking import MlflowReportHook

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    catalog, pipeline = _report_project(tmp_path)
    run_params = {"pipeline_names": ["phase4"], "run_id": "r1", "project_path": str(tmp_path)}
    hook = MlflowReportHook(open_run=True)
    hook.before_pipeline_run(run_params, pipeline, catalog)
    hook.after_pipeline_run(run_params, pipeline, catalog)
    assert mlflow.active_run() is None  # closed again

    client = mlflow.tracking.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("sae_reasoning").experiment_id])
    assert run.info.run_name == "phase4" and run.info.status == "FINISHED"
    assert run.data.params == {"causal.top_k": "4", "models.m.layers": "[1]"}
    assert run.data.tags["run_id"] == "r1"
    assert run.data.metrics == {
        f"m/{HOOK}/explained_variance": 0.8,
        f"m/{HOOK}/l0": 12.0,
        "m/gsm8k/baseline_accuracy": 0.25,
    }
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "PHASE4_REPORT.md",
        "training_summary.json",
        "causal_test_results.json",
        "plots",
    }
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == [
        "plots/m_curve.png"
    ]
    assert (tmp_path / "data" / "09_tracking" / "mlartifacts").is_dir()  # not ./mlruns
