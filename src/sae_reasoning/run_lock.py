"""One writing `kedro run` at a time per project data folder.

Two runs in one project write the same files (activation shards, their temporary
manifests, SAE folders) and break each other. `RunLock` is an exclusive lock on
`<data folder>/.kedro_run.lock` (the maintained `filelock` library: an OS file lock, which
the kernel releases when the holding process dies) with a small JSON beside it,
`.kedro_run.lock.json`, naming the holder: pid, host, start time and command. A second run
stops at once with a message naming that holder.

A lock whose recorded holder is a process that no longer runs on this host (a run killed
with SIGKILL, or a lock file on a filesystem where `filelock` falls back to a plain marker
file) is taken over, with a warning. A holder on another host cannot be checked: the
message says so and which files to delete.

File locks hold on local disks (and NFS with working locks). The lock lives in the
project's local data folder, so it does not coordinate runs on different machines that
write to one remote store (s3://...): avoiding those is the user's job.

The lock is taken by `RunLockHook.before_pipeline_run`, which Kedro calls once, in the
main process; runner workers (DeviceSlotRunner, DaskRunner) only run node hooks, and
start by spawn or from a fork server, so they neither take the lock nor inherit it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock, Timeout

from sae_reasoning.atomic import atomic_write_text

log = logging.getLogger(__name__)

LOCK_FILENAME = ".kedro_run.lock"
HOLDER_SUFFIX = ".json"
GUARD_SUFFIX = ".guard"
GUARD_TIMEOUT_S = 30.0  # the guard is held for milliseconds (acquire + write the JSON)


class RunLockError(RuntimeError):
    """Another run holds the lock; the message names it."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder


def this_holder(command: str | None = None, **extra: Any) -> dict:
    """What the JSON beside the lock records about this process."""
    me = psutil.Process()
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "process_started": me.create_time(),
        "command": command
        if command is not None
        else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **extra,
    }


def describe(holder: dict | None) -> str:
    if not holder:
        return "an unknown process (no holder record beside the lock)"
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}, "
        f"command: {holder.get('command')}"
    )


def holder_alive(holder: dict) -> bool | None:
    """True/False for a holder on this host; None when it ran elsewhere (cannot tell)."""
    if holder.get("host") != socket.gethostname():
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int) or not psutil.pid_exists(pid):
        return False
    created = holder.get("process_started")
    if created is None:
        return True
    try:
        # A pid reused by a later process is not the holder.
        return abs(psutil.Process(pid).create_time() - float(created)) < 1.0
    except psutil.Error:
        return False


class RunLock:
    """An exclusive, non-blocking lock on a folder, with its holder recorded beside it."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILENAME
        self.holder_path = self.path.with_name(self.path.name + HOLDER_SUFFIX)
        self._guard_path = self.path.with_name(self.path.name + GUARD_SUFFIX)
        self._lock: FileLock | None = None
        self.holder: dict | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None and self._lock.is_locked

    def read_holder(self) -> dict | None:
        try:
            data = json.loads(self.holder_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _new_lock(self) -> FileLock:
        return FileLock(self.path, timeout=0, thread_local=False)

    def acquire(self, **holder_info: Any) -> RunLock:
        """Take the lock or raise RunLockError naming the holder (never waits for a run)."""
        if self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        # The guard serialises acquire + holder record (and a stale take-over), so a run
        # never reads a half-written record or removes a lock another run just took.
        guard = FileLock(self._guard_path, timeout=GUARD_TIMEOUT_S, thread_local=False)
        with guard:
            previous = self.read_holder()
            lock = self._new_lock()
            try:
                lock.acquire()
            except Timeout:
                alive = holder_alive(previous) if previous else None
                if previous is None or alive is not False:
                    raise RunLockError(self._refusal(previous, alive), previous) from None
                log.warning(
                    "taking over the run lock %s: its holder (%s) is no longer running",
                    self.path,
                    describe(previous),
                )
                self._remove_files()
                lock = self._new_lock()
                try:
                    lock.acquire()
                except Timeout:
                    raise RunLockError(self._refusal(self.read_holder(), None), previous) from None
            else:
                if previous is not None:
                    log.warning(
                        "taking over the run lock %s left by %s, which ended without "
                        "releasing it (killed?)",
                        self.path,
                        describe(previous),
                    )
            self._lock = lock
            self.holder = this_holder(**holder_info)
            atomic_write_text(self.holder_path, json.dumps(self.holder, indent=1), unique=True)
        log.debug("run lock %s taken (pid %d)", self.path, os.getpid())
        return self

    def release(self) -> None:
        if not self.held:
            self._lock = None
            return
        guard = FileLock(self._guard_path, timeout=GUARD_TIMEOUT_S, thread_local=False)
        try:
            guard.acquire()
        except Timeout:  # never keep a finished run's lock for want of the guard
            guard = None
        try:
            if (self.read_holder() or {}).get("pid") == os.getpid():
                self.holder_path.unlink(missing_ok=True)
        finally:
            self._lock.release(force=True)
            self._lock = None
            self.holder = None
            if guard is not None:
                guard.release()

    def _remove_files(self) -> None:
        for p in (self.path, self.holder_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def _refusal(self, holder: dict | None, alive: bool | None) -> str:
        text = (
            f"another Kedro run is writing to this project's data folder {self.folder}: "
            f"{describe(holder)}. Two runs in one project overwrite each other's files; "
            "wait for that run to finish or stop it."
        )
        if holder is not None and alive is None:
            text += (
                f" It runs on another host ({holder.get('host')}), so this host cannot tell "
                f"whether it is still alive; if it is not, delete {self.path} and "
                f"{self.holder_path}."
            )
        return text

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
