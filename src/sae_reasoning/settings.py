"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from sae_reasoning.hooks import ConfigCaptureHook, ResourceLedgerHook, RunLockHook, SAECheckHook
from sae_reasoning.tracking import (
    MlflowReportHook,
    kedro_mlflow_hook,
    plugin_installed,
    tracking_enabled,
)

# ConfigCaptureHook: the registry builds one namespaced pipeline per configured model, so
# it has to see the configuration of the run's environment; this hook hands it over.
# SAECheckHook: SAE folders used as they are must fit the configured model (pre-flight).
# RunLockHook: one writing run at a time per project data folder (run_lock.py).
# ResourceLedgerHook: what each node cost (ledger.py), one record per node and run in the
# folder that the `resource_ledger` catalog entry reads (conf/base/catalog_reporting.yml).
HOOKS = (
    ConfigCaptureHook(),
    SAECheckHook(),
    RunLockHook(),
    ResourceLedgerHook("data/09_tracking/resource_ledger"),
)

# Run tracking (README "Tracking runs"; the `tracking` extra): on with SAE_REASONING_TRACKING=1.
# Installed, kedro-mlflow registers its hook through an entry point in every session: that
# one stays off, so untracked runs open no MLflow run or store. When tracking is on, its hook
# is registered here instead, less the per-node parameter logging that misfires in runner
# workers (tracking.kedro_mlflow_hook); MlflowReportHook logs the parameters, the report's
# metrics and its files. mlflow is imported only when tracking is on.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")
if tracking_enabled():
    HOOKS = (*HOOKS, *((kedro_mlflow_hook(),) if plugin_installed() else ()), MlflowReportHook())

# kedro_device_runner (`kedro run --runner=kedro_device_runner.DeviceSlotRunner`): this
# project's estimate of a model namespace's memory need, for placing it on a device slot;
# the allowlist lets `kedro server` accept that runner as it accepts the project's own.
DEVICE_RUNNER_MEMORY_ESTIMATOR = "sae_reasoning.runner_config:group_memory"
RUNNER_MODULE_ALLOWLIST = ("kedro_device_runner",)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
