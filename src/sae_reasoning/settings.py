"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from sae_reasoning.hooks import ConfigCaptureHook

# The registry builds one namespaced pipeline per configured model, so it has to see the
# configuration of the run's environment; this hook hands it over.
HOOKS = (ConfigCaptureHook(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
