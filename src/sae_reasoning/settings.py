"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from sae_reasoning.hooks import ConfigCaptureHook, ResourceLedgerHook, RunLockHook, SAECheckHook

# ConfigCaptureHook: the registry builds one namespaced pipeline per configured model, so
# it has to see the configuration of the run's environment; this hook hands it over.
# SAECheckHook: SAE folders used as they are must fit the configured model (pre-flight).
# RunLockHook: one writing run at a time per project data folder (run_lock.py).
# ResourceLedgerHook: what each node cost (ledger.py), one record per node and run in the
# folder that the `resource_ledger` catalog entry reads (conf/base/catalog_reporting.yml).
HOOKS = (ConfigCaptureHook(), SAECheckHook(), RunLockHook(),
         ResourceLedgerHook("data/09_tracking/resource_ledger"))

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
