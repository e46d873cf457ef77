"""Project hooks (registered in settings.HOOKS).

Runner workers register these hooks too, but run only node and dataset hooks there; the
pipeline hooks below (`before_pipeline_run`, `after_pipeline_run`, `on_pipeline_error`)
run once per `kedro run`, in the main process.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

log = logging.getLogger(__name__)


class ConfigCaptureHook:
    """Keeps the session's config loader, so that `register_pipelines` (which Kedro calls
    without arguments, after the context exists) sees the chosen `--env` and `--params`."""

    def __init__(self):
        self.config_loader = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self.config_loader = context.config_loader


def _dataset(catalog, name: str):
    try:
        return catalog.get(name)
    except Exception:  # noqa: BLE001 - a dataset that cannot be built is the run's to report
        return None


def run_writes(pipeline, catalog) -> bool:
    """Whether the run saves anything outside memory (then it takes the run lock)."""
    for name in pipeline.all_outputs():
        ds = _dataset(catalog, name)
        if ds is not None and not isinstance(ds, MemoryDataset):
            return True
    return False


class RunLockHook:
    """One writing run at a time per project data folder (`sae_reasoning.run_lock`).

    Taken last among `before_pipeline_run` hooks (trylast: a hook that fails before it
    leaves nothing to release), released after the run or its failure. A second run stops
    at once with a message naming the holder.
    """

    def __init__(self, data_folder: str = "data"):
        self._data_folder = data_folder
        self._lock = None
        self._atexit = False

    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        from sae_reasoning.run_lock import RunLock, RunLockError

        if not run_writes(pipeline, catalog):
            return
        if self._lock is not None:  # a previous run in this process did not finish cleanly
            self._lock.release()
        folder = Path(run_params.get("project_path") or Path.cwd()) / self._data_folder
        lock = RunLock(folder)
        try:
            lock.acquire(
                run_id=run_params.get("run_id"), pipelines=run_params.get("pipeline_names")
            )
        except RunLockError as exc:
            import click

            raise click.ClickException(str(exc)) from None
        self._lock = lock
        if not self._atexit:
            # Kedro calls on_pipeline_error for Exceptions only: after Ctrl-C
            # (KeyboardInterrupt) the process exits without either hook, so release there.
            atexit.register(self._release)
            self._atexit = True

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @hook_impl
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        self._release()


def _reads_stored(name: str, pipeline, run_params: dict[str, Any]) -> bool:
    """Whether the run uses dataset `name` as it is on disk: a free input, or (with
    --only-missing-outputs) an output that exists, so its node is skipped."""
    if name in pipeline.inputs():
        return True
    return bool(run_params.get("only_missing_outputs")) and name in pipeline.all_outputs()


class SAECheckHook:
    """Pre-flight: SAE folders that the run uses as they are (pre-trained, or left over and
    kept by --only-missing-outputs) must fit the configured model (d_in = d_model, hook
    points, cfg.json model_name), checked before capture runs; the run stops otherwise.
    A misfit folder this run retrains is logged (training replaces it); one the run does
    not touch (e.g. `--pipeline=validate`) gets a warning. Runs first (tryfirst), before
    the run lock is taken. `models.<ns>.sae_source` entries (pretrained SAEs) are checked
    too when the run loads them (hook served and configured, block exists, d_in = d_model)."""

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        from sae_reasoning.datasets.sae import SAEDataset
        from sae_reasoning.preflight import PreflightError, check_sae_folders

        datasets = pipeline.datasets()
        namespaces = sorted(
            {n[: -len(".model")] for n in datasets if n.endswith(".model")}
            | {n[: -len(".sae")] for n in datasets if n.endswith(".sae")}
        )
        problems, source_problems = [], []
        for namespace in namespaces:
            name = f"{namespace}.sae"
            sae_ds, model_ds = _dataset(catalog, name), _dataset(catalog, f"{namespace}.model")
            if not isinstance(sae_ds, SAEDataset) or model_ds is None:
                continue
            source_problems += self._check_sources(namespace, name, pipeline, catalog, model_ds)
            stored = sae_ds.stored_configs()
            if not stored:
                continue
            model_params = self._params(catalog, f"params:models.{namespace}")
            sae_training = self._params(catalog, "params:sae_training")
            lines = check_sae_folders(
                namespace,
                model_ds.load(),
                model_params,
                stored,
                self._hook_points(model_params, sae_training),
            )
            if name not in datasets:
                for line in lines:
                    log.warning(
                        "%s; a run that uses it as it is (causal, "
                        "--only-missing-outputs) would stop here",
                        line,
                    )
            elif _reads_stored(name, pipeline, run_params):
                problems.extend(lines)
            else:
                for line in lines:
                    log.info("%s; this run trains that SAE again and replaces it", line)
        if source_problems:
            raise PreflightError(
                "sae_source check failed before the run (pretrained SAEs):\n  - "
                + "\n  - ".join(source_problems)
            )
        if problems:
            raise PreflightError(
                "SAE check failed before the run (these SAEs would be used as they are):\n  - "
                + "\n  - ".join(problems)
                + "\nTrain them for this model (delete the folder, or run sae_training without "
                "--only-missing-outputs) or point the `<model>.sae` catalog entry at SAEs of "
                "this model."
            )

    def _check_sources(self, namespace: str, name: str, pipeline, catalog, model_ds) -> list[str]:
        """Problems of the namespace's sae_source entries when this run loads them (it saves
        `<ns>.sae`); otherwise (e.g. --pipeline=validate) they are logged as warnings."""
        from sae_reasoning.preflight import check_sae_sources

        model_params = self._params(catalog, f"params:models.{namespace}")
        if not model_params.get("sae_source"):
            return []
        lines = check_sae_sources(
            namespace,
            model_ds.load(),
            model_params,
            self._hook_points(model_params, self._params(catalog, "params:sae_training")),
        )
        if name in pipeline.all_outputs():
            return lines
        for line in lines:
            log.warning("%s", line)
        return []

    @staticmethod
    def _params(catalog, name: str) -> dict:
        ds = _dataset(catalog, name)
        try:
            value = ds.load() if ds is not None else {}
        except Exception:  # noqa: BLE001
            value = {}
        return value if isinstance(value, dict) else {}

    @staticmethod
    def _hook_points(model_params: dict, sae_training: dict) -> list[str]:
        from sae_reasoning.pipelines.sae_training.nodes import hook_points_for

        try:
            return hook_points_for(model_params, sae_training)
        except ValueError:  # no `layers`: the run reports it
            return []


class ResourceLedgerHook:
    """The resource ledger (ledger.py): per node and run, wall time, device, peak memory,
    tokens and device-hours, in `folder` (read by the `resource_ledger` catalog entry).

    A node's window opens at its first input load (or before it runs, without inputs) and
    closes once its last output is saved: loads and saves can be heavy too (a remote
    store's downloads and uploads). Node and dataset hooks run in runner workers too, so each
    process writes its own nodes' records. A node whose input load or output save raises gets no
    Kedro node hook; its record stays "running" (a worker) or is closed as failed by
    `on_pipeline_error` (the main process).
    """

    def __init__(self, folder: str = "data/09_tracking/resource_ledger"):
        from sae_reasoning.ledger import LedgerRecorder

        self.recorder = LedgerRecorder(folder)

    @hook_impl
    def after_context_created(self, context) -> None:
        # A session started outside the project folder (a notebook) writes into the project.
        if not self.recorder.folder.is_absolute():
            self.recorder.folder = Path(context.project_path) / self.recorder.folder

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        ds = _dataset(catalog, "resource_ledger")
        path = getattr(ds, "path", None)
        if path is not None and Path(path).resolve() != self.recorder.folder.resolve():
            log.warning(
                "resource ledger: the hook writes %s but the `resource_ledger` catalog "
                "entry reads %s; the report's resources table will not see this run",
                self.recorder.folder,
                path,
            )

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str, node) -> None:
        self.recorder.open(node)

    @hook_impl
    def before_node_run(self, node, run_id: str) -> None:
        self.recorder.begin(node, run_id)

    @hook_impl
    def after_node_run(self, node) -> None:
        self.recorder.ran(node)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, node) -> None:
        self.recorder.saved(node, dataset_name)

    @hook_impl
    def on_node_error(self, error: Exception, node, run_id: str) -> None:
        self.recorder.close(node.name, "failed", f"{type(error).__name__}: {error}", run_id)

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any]) -> None:
        self.recorder.close_all(
            "failed", f"{type(error).__name__}: {error}", run_params.get("run_id")
        )
