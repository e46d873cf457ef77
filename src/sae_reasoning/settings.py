"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from sae_reasoning.hooks import ConfigCaptureHook, RunLockHook, SAECheckHook

# ConfigCaptureHook: the registry builds one namespaced pipeline per configured model, so
# it has to see the configuration of the run's environment; this hook hands it over.
# SAECheckHook: SAE folders used as they are must fit the configured model (pre-flight).
# RunLockHook: one writing run at a time per project data folder (run_lock.py).
HOOKS = (ConfigCaptureHook(), SAECheckHook(), RunLockHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
