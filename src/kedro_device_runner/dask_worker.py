"""What runs on a Dask worker: `warm_up` (torch and the project imported once per worker
process) and `run_group_task` (one namespace group, as one Dask task).

A task's log records (its thread's only: a worker may run other tasks at once) go to the
namespace's log file and come back with the result, for a worker on another machine.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kedro_device_runner.heap import restore_dynamic_thresholds
from kedro_device_runner.preload import import_project
from kedro_device_runner.worker import LOG_FORMAT, _bootstrap, _set_threads, execute_group, failure

STARTED = "started"  # the task's event when its group starts on a worker

_HOOK_MANAGERS: dict[str | None, Any] = {}
_HOOKS_LOCK = threading.Lock()


def _hook_manager(package_name: str | None):
    """This worker process's hook manager for `package_name`, built (and the project
    configured) once. Configuring the project replaces the root log handlers."""
    with _HOOKS_LOCK:
        if package_name not in _HOOK_MANAGERS:
            _HOOK_MANAGERS[package_name] = _bootstrap(package_name)
        return _HOOK_MANAGERS[package_name]


def warm_up(package_name: str | None) -> float:
    """Make this worker process ready for namespace tasks; returns the seconds it took.

    Restores glibc's malloc thresholds, imports torch and the project's pipelines (and so
    every node's module), builds the hook manager, and creates the CUDA context on a GPU
    worker. Idempotent: a second call costs nothing. Called as a run opens (overlapping the
    shared nodes) and by the worker preload (`kedro_device_runner.dask_preload`).
    """
    start = time.perf_counter()
    restore_dynamic_thresholds()
    import_project(package_name)
    _hook_manager(package_name)
    import torch

    if torch.cuda.is_available():
        torch.cuda.init()
    return time.perf_counter() - start


def run_group_task(
    namespace: str,
    payload: bytes,
    log_path: str,
    package_name: str | None,
    topic: str,
    threads: int | None,
) -> dict:
    """The Dask task: one namespace group on this worker. Returns its outcome (a failing
    node is an outcome, not a task error: Dask must not retry it elsewhere)."""
    from distributed import get_worker

    worker = get_worker()
    restore_dynamic_thresholds()  # before any model work: see heap.py

    def notify(event: str, **info) -> None:
        worker.log_event(topic, {"event": event, "namespace": namespace, **info})

    buffer = io.StringIO()
    # Configuring the project replaces the root log handlers: do it before adding ours.
    try:
        hook_manager = _hook_manager(package_name)
    except Exception as exc:  # noqa: BLE001 - reported as the group's failure
        return {"status": "failed", **failure(exc), "worker": worker.address, "log": ""}
    with _task_log(log_path, buffer):
        logger = logging.getLogger(__name__)
        started = time.time()
        try:
            group = pickle.loads(payload)  # imports the nodes' modules
            if threads:
                os.environ["OMP_NUM_THREADS"] = str(threads)
                _set_threads(threads)
            logger.info(
                "Namespace %s on worker %s (pid %d, CUDA_VISIBLE_DEVICES=%r)",
                namespace,
                worker.address,
                os.getpid(),
                os.environ.get("CUDA_VISIBLE_DEVICES"),
            )
            notify(STARTED, worker=worker.address, pid=os.getpid(), time=started)
            done = execute_group(group, hook_manager, notify)
            logger.info("Namespace %s finished (%d nodes)", namespace, len(done))
            outcome = {"status": "done", "done_nodes": done, "time": time.time()}
        except Exception as exc:  # noqa: BLE001 - reported to the client, by namespace
            outcome = {"status": "failed", **failure(exc)}
    return {
        **outcome,
        "started": started,
        "worker": worker.address,
        "pid": os.getpid(),
        "log": buffer.getvalue(),
    }


@contextlib.contextmanager
def _task_log(log_path: str, buffer: io.StringIO) -> Iterator[None]:
    """While a task runs, its records go to its log file and `buffer` (at INFO at least);
    the worker's own handlers (its console) leave them out, as a DeviceSlotRunner worker's
    go only to its log."""
    handlers = _log_handlers(log_path, buffer)
    skip = handlers[0].filters[0].skip
    root = logging.getLogger()
    level = root.level
    root.setLevel(min(level or logging.INFO, logging.INFO))
    others = list(root.handlers)
    for h in others:
        h.addFilter(skip)
    for h in handlers:
        root.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        for h in others:
            h.removeFilter(skip)
        root.setLevel(level)


def _log_handlers(log_path: str, buffer: io.StringIO) -> list[logging.Handler]:
    """This task's log records (its thread only) to the namespace's log file and to a
    buffer sent back with the result."""
    thread = threading.get_ident()
    handlers: list[logging.Handler] = [logging.StreamHandler(buffer)]
    try:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, encoding="utf-8"))
    except OSError:  # not writable on this machine: the buffer still goes back
        pass
    only_this_task = _ThreadFilter(thread)
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        h.addFilter(only_this_task)
    return handlers


class _ThreadFilter(logging.Filter):
    """Keeps one thread's records; `skip` is its opposite (for the worker's handlers)."""

    def __init__(self, thread: int):
        super().__init__()
        self.thread = thread
        self.skip = lambda record: record.thread != thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread
