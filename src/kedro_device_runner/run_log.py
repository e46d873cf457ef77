"""The run's own files: `<log_dir>/<run_id>/run.log` (this process's records during the
run), created only once there is something to write; a folder that cannot be created is
refused before any work."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from kedro_device_runner.worker import LOG_FORMAT


def check_can_create(folder: Path, what: str) -> None:
    """Fail now, naming `folder`, if it could not be created (its nearest existing parent
    is a file or not writable); creates nothing: a refused run leaves nothing behind."""
    parent = Path(os.path.abspath(folder))
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"{what} {folder} cannot be created: {parent} is not a writable folder. "
            "Pass log_dir=<a writable folder> in --runner-params."
        )


class _RunLogHandler(logging.FileHandler):
    """Opens (and makes the folder of) its file at the first record, not before: a run
    refused before any work leaves nothing behind. Unwritable after all (the disk went
    away): reported once, and the run goes on."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            try:
                Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
                self.stream = self._open()
            except OSError as exc:  # stop trying (this handler then drops every record)
                self.setLevel(logging.CRITICAL + 1)
                logging.getLogger(__name__).warning(
                    "Could not write the run log %s: %s", self.baseFilename, exc
                )
                return
        super().emit(record)


@contextlib.contextmanager
def run_log(path: Path, log: logging.Logger) -> Iterator[None]:
    """This process's log records during the run (the runner's, the shared nodes', the
    live lines and the summary) also go to `path`, beside the namespaces' logs."""
    handler = _RunLogHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
