"""Worker processes of `DeviceSlotRunner`: the fork server that CPU workers are forked
from, a child's environment and output at start, and stopping children."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from kedro_device_runner.preload import PACKAGE_ENV_VAR
from kedro_device_runner.slots import visible_gpus


def may_use_cpu_slots(spec) -> bool:
    """Whether `slots` can give CPU slots: named ones, or "auto"/N on a machine without GPUs."""
    text = ";".join(map(str, spec)) if isinstance(spec, (list, tuple)) else str(spec)
    return "cpu" in text.lower() or not visible_gpus()


def start_fork_server(package: str | None) -> None:
    """Start (once per process) multiprocessing's fork server, preloading
    `kedro_device_runner.fork_server_preload`: torch, pandas, cloudpickle, Kedro's hook
    plugins and the Kedro project `package`'s pipelines (so every node's module) are
    imported there once, and each CPU worker is a fork of it, ready in a fraction of a
    second. It runs no torch op, so its children
    can use any number of OpenMP threads. A server already running is reused as it is
    (the first preload wins; what it lacks, a worker imports itself)."""
    from multiprocessing import forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["kedro_device_runner.fork_server_preload"]
    )
    with environ({PACKAGE_ENV_VAR: package or ""}):  # read by the preload in the server
        forkserver.ensure_running()


def stop_all(handles) -> None:
    for handle in list(handles):
        if handle.process.is_alive():
            handle.process.terminate()
        reap(handle.process, grace_s=10.0)


def reap(process, grace_s: float = 30.0) -> None:
    process.join(timeout=grace_s)
    if process.is_alive():
        process.kill()
        process.join()


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def stdio_to(log_path: Path) -> Iterator[None]:
    """Point this process's fds 1 and 2 at `log_path` while a child is being started."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
