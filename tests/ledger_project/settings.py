import os

from sae_reasoning.hooks import ResourceLedgerHook
from sae_reasoning.ledger import LedgerRecorder


class EnvFolderLedgerHook(ResourceLedgerHook):
    """The project's hook, writing where the test says (LEDGER_TEST_DIR, which workers
    inherit): a test's folder is not known when this module is imported."""

    def __init__(self):
        self._recorders: dict[str, LedgerRecorder] = {}

    @property
    def recorder(self) -> LedgerRecorder:
        folder = os.environ["LEDGER_TEST_DIR"]
        return self._recorders.setdefault(folder, LedgerRecorder(folder))


HOOKS = (EnvFolderLedgerHook(),)

# kedro-mlflow (the tracking extra) registers its hook in every session; not wanted here.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")
