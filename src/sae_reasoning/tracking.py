"""Run tracking with MLflow (the optional `tracking` extra; README "Tracking runs").

Off unless SAE_REASONING_TRACKING=1. When on, kedro-mlflow opens an MLflow run per `kedro
run` (store and experiment from conf/base/mlflow.yml); `MlflowReportHook` logs every
parameter into it when the run starts and, after the run, the key metrics of the report
(per model and hook point: explained variance, L0, CE loss recovered; per model and
benchmark: baseline accuracy; per model and hook point: the all-features and top-K ablation
effects) and the report itself, its summaries and plots as artifacts. It reads them through
the catalog. mlflow is imported only inside the hooks, so with tracking off the project
never imports it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.framework.hooks import hook_impl

log = logging.getLogger(__name__)

ENV_VAR = "SAE_REASONING_TRACKING"
_ON, _OFF = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}

# The default store, experiment and artifact folder, as in conf/base/mlflow.yml (used here
# only without kedro-mlflow; MLFLOW_TRACKING_URI overrides the store).
DEFAULT_STORE = "data/09_tracking/mlflow.db"
DEFAULT_ARTIFACTS = "data/09_tracking/mlartifacts"
EXPERIMENT = "sae_reasoning"

MAX_PARAM = 6000  # mlflow's limit on a parameter's value

# Report outputs whose values become metrics, and those logged whole as artifacts (besides
# every plot the run wrote).
METRIC_SOURCES = ("training_summary", "causal_test_results")
ARTIFACTS = (
    "phase4_report",
    "training_summary",
    "causal_test_results",
    "feature_importance_ranking",
    "resources_summary",
)


def tracking_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether SAE_REASONING_TRACKING asks for tracking; a clear error if it does and mlflow
    is not installed (checked without importing it), before any node runs."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip().lower()
    if value not in _ON | _OFF:
        raise ValueError(f"{ENV_VAR}={value!r}: use 1 (tracking on) or 0 (off)")
    if value in _OFF:
        return False
    if importlib.util.find_spec("mlflow") is None:
        raise RuntimeError(
            f"{ENV_VAR}=1 but mlflow is not installed: "
            "`.venv/bin/pip install -e '.[tracking]'` (or `make tracking`)"
        )
    return True


def plugin_installed() -> bool:
    """Whether kedro-mlflow is installed (checked without importing it)."""
    return importlib.util.find_spec("kedro_mlflow") is not None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def key_metrics(training_summary: dict, causal_results: dict) -> dict[str, float]:
    """The report's headline numbers as flat MLflow metric names, `<model>/<hook>/<name>` or
    `<model>/<benchmark>/<name>`. Values the report leaves empty (a skipped stage) are left out."""
    out: dict[str, Any] = {}
    for model, summary in (training_summary or {}).items():
        for hook, m in (summary.get("sae_metrics") or {}).items():
            spliced = m.get("spliced") or {}
            out[f"{model}/{hook}/explained_variance"] = m.get("explained_variance")
            out[f"{model}/{hook}/fvu"] = m.get("fvu")
            out[f"{model}/{hook}/l0"] = m.get("l0")
            out[f"{model}/{hook}/ce_loss_recovered"] = spliced.get("ce_loss_recovered")
    for model, results in (causal_results or {}).items():
        for bench, b in (results.get("baseline_vs_chance") or {}).items():
            out[f"{model}/{bench}/baseline_accuracy"] = b.get("accuracy")
            out[f"{model}/{bench}/chance"] = b.get("chance")
        for hook, h in (results.get("hook_points") or {}).items():
            for name, effect in (
                ("all_features", h.get("all_features_zero")),
                ("top_k", (h.get("controls") or {}).get("top_k_set")),
            ):
                for field in ("delta_logprob", "delta_accuracy"):
                    out[f"{model}/{hook}/{name}_{field}"] = (effect or {}).get(field)
    return {k: v for k, v in ((k, _number(v)) for k, v in out.items()) if v is not None}


def _flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


def _filepath(catalog, name: str) -> str | None:
    """The file a catalog entry writes (resolving factories), or None if it has none."""
    config = catalog.config_resolver.resolve_pattern(name) or {}
    path = config.get("filepath")
    return None if path is None else str(path)


class MlflowReportHook:
    """Records a `kedro run` in MLflow: every parameter (flattened, `causal.top_k`) when the
    run starts, the report's key metrics and files when it ends. Into kedro-mlflow's run, or
    one it opens itself (`open_run`; by default where kedro-mlflow is not installed). Runs in
    the main process only: runner workers run node hooks, not pipeline hooks."""

    def __init__(self, open_run: bool | None = None):
        self._open_run = not plugin_installed() if open_run is None else open_run
        self._own = False

    @hook_impl(trylast=True)  # after kedro-mlflow's before_pipeline_run opened its run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        import mlflow

        self._own = mlflow.active_run() is None and self._open_run
        if self._own:  # without kedro-mlflow: the same record, in the same store
            root = Path(run_params.get("project_path") or Path.cwd())
            if "MLFLOW_TRACKING_URI" not in os.environ:
                mlflow.set_tracking_uri(f"sqlite:///{root / DEFAULT_STORE}")
            if mlflow.get_experiment_by_name(EXPERIMENT) is None:  # files beside the store
                mlflow.create_experiment(EXPERIMENT, (root / DEFAULT_ARTIFACTS).as_uri())
            mlflow.set_experiment(EXPERIMENT)
            mlflow.start_run(run_name="+".join(run_params.get("pipeline_names") or ["__default__"]))
            mlflow.set_tags({k: str(v) for k, v in run_params.items() if v})  # as kedro-mlflow
        if mlflow.active_run() is None:
            log.info("mlflow: kedro-mlflow opened no run (disable_tracking in mlflow.yml?)")
            return
        params = {k: str(v) for k, v in _flatten(catalog.load("parameters")).items()}
        mlflow.log_params({k: v for k, v in params.items() if len(v) <= MAX_PARAM})
        # mlflow refuses longer params; kept whole as tags (kedro-mlflow's "tag" strategy)
        mlflow.set_tags({f"param.{k}": v for k, v in params.items() if len(v) > MAX_PARAM})

    @hook_impl(tryfirst=True)  # before kedro-mlflow's after_pipeline_run ends the run
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        import mlflow

        if mlflow.active_run() is None:
            return
        outputs = pipeline.all_outputs()
        try:
            if all(name in outputs for name in METRIC_SOURCES):
                metrics = key_metrics(*(catalog.load(name) for name in METRIC_SOURCES))
                mlflow.log_metrics(metrics)
                log.info(
                    "mlflow: logged %d metrics to run %s",
                    len(metrics),
                    mlflow.active_run().info.run_id,
                )
            self._log_artifacts(mlflow, catalog, outputs)
        finally:
            if self._own:
                mlflow.end_run()

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        if self._own:
            import mlflow

            mlflow.end_run("FAILED")

    @staticmethod
    def _log_artifacts(mlflow, catalog, outputs: set[str]) -> None:
        import fsspec
        from kedro_datasets.matplotlib import MatplotlibDataset

        plots = {n for n in outputs if isinstance(catalog.get(n), MatplotlibDataset)}
        for name in sorted(plots | (set(ARTIFACTS) & outputs)):
            path = _filepath(catalog, name)
            if path is None:
                continue
            with tempfile.TemporaryDirectory() as tmp, fsspec.open(path, "rb") as src:
                local = Path(tmp) / PurePosixPath(path).name  # also from s3:// and co.
                local.write_bytes(src.read())
                mlflow.log_artifact(str(local), artifact_path="plots" if name in plots else None)


def kedro_mlflow_hook():
    """kedro-mlflow's hook (its run, its mlflow.yml), less its per-node parameter logging:
    MlflowReportHook logs every parameter once from the main process, whereas in runner
    workers (DeviceSlotRunner, DaskRunner) kedro-mlflow's node hook opens stray runs."""
    from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

    class MainProcessMlflowHook(MlflowHook):
        @hook_impl
        def before_node_run(self, node, catalog, inputs, is_async) -> None:
            pass

    return MainProcessMlflowHook()
