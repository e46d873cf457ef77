from tests.runner.toy_nodes import RecordingHooks

HOOKS = (RecordingHooks(),)
