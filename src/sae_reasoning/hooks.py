"""Project hooks."""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl

_RUN_CONFIG: dict[str, Any] = {}


class ConfigCaptureHook:
    """Remembers the run's config loader so `register_pipelines` sees the chosen `--env`."""

    @hook_impl
    def after_context_created(self, context) -> None:
        _RUN_CONFIG["config_loader"] = context.config_loader
        _RUN_CONFIG["env"] = context.env


def run_config_loader():
    """The config loader of the current Kedro context, if one was created in this process."""
    return _RUN_CONFIG.get("config_loader")
