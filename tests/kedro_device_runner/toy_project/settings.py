from tests.kedro_device_runner.toy_nodes import RecordingHooks

HOOKS = (RecordingHooks(),)

# kedro-mlflow (the tracking extra) registers its hook in every session; not wanted here.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")
