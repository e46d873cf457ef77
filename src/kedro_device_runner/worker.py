"""The worker process: runs one namespace group, node by node, on the slot it was given.

It starts with its slot's environment already in place, sends its output to the
namespace's log file, rebuilds the project's hook manager the way `KedroSession` does,
loads the group (which imports the nodes' modules: torch, transformers...), says `ready`
and waits for `go`. A spawned worker imports everything anew (seconds, mostly torch); a
fork server's child (CPU slots, see `DeviceSlotRunner.start_method`) has it all already
and is ready in a fraction of a second. The parent may start a worker while the shared
nodes upstream of its group are still running, so that start-up overlaps them.
Then it runs the group's nodes (`execute_group`, shared with the Dask backend) and
reports each node's start and end, then `done` or `failed`.

Nothing here imports torch: in a spawned worker the slot's environment must be in force
before anything does (the parent sets it before the process starts; `run_group` sets it
again first thing).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from typing import Any

from kedro.framework.project import configure_project, settings, validate_settings
from kedro.pipeline import Pipeline
from kedro.runner import Task

from kedro_device_runner.errors import describe
from kedro_device_runner.kedro_private import hook_manager as build_hook_manager
from kedro_device_runner.kedro_private import release_datasets
from kedro_device_runner.node_metrics import NodeMeter, take
from kedro_device_runner.slots import THREAD_ENV_VARS, Slot

# Worker -> parent.
READY = "ready"
NODE_START = "node_start"
NODE_DONE = "node_done"
NODE_FAILED = "node_failed"  # before FAILED: the failed node's figures (node_metrics)
DONE = "done"
FAILED = "failed"
# Parent -> worker.
GO = "go"
STOP = "stop"
# Parent -> worker, outside the pipe: a shared int holds the CPU threads to use (0: the
# slot's), and SIGUSR1 says "look now" (see ThreadShare).
THREADS_SIGNAL = getattr(signal, "SIGUSR1", None)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"


@dataclass
class GroupPayload:
    """Everything a worker needs to run one namespace group (pickled by the parent)."""

    namespace: str
    nodes: list  # kedro Nodes
    catalog: Any  # a catalog holding only the datasets these nodes use
    is_async: bool
    run_id: str | None


def run_group(
    conn,
    slot: Slot,
    log_path: str,
    package_name: str | None,
    payload: bytes,
    environ: dict[str, str] | None = None,
    threads_box=None,
) -> None:
    """Entry point of the worker process (`conn`: a duplex pipe to the parent; `environ`:
    the parent's environment, which a fork server's child did not inherit; `threads_box`:
    see ThreadShare)."""
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    os.environ.update(slot.env())
    log_stream = _redirect_output(log_path)
    logger = logging.getLogger(__name__)
    try:
        hook_manager = _bootstrap(package_name, log_stream)
        group: GroupPayload = pickle.loads(payload)  # imports the nodes' modules
        _set_threads(slot.threads)
        share = ThreadShare(threads_box, slot.threads)
        logger.info(
            "Namespace %s on slot %s (pid %d, CUDA_VISIBLE_DEVICES=%r, %d CPU threads)",
            group.namespace,
            slot.name,
            os.getpid(),
            os.environ.get("CUDA_VISIBLE_DEVICES"),
            slot.threads,
        )
        conn.send({"event": READY, "time": time.time()})
        if conn.recv() != GO:
            logger.info("Namespace %s not run: an upstream node failed", group.namespace)
            return

        done_nodes = execute_group(
            group,
            hook_manager,
            lambda event, **info: conn.send({"event": event, **info}),
            between_nodes=share.between_nodes,
        )
        logger.info("Namespace %s finished (%d nodes)", group.namespace, len(done_nodes))
        conn.send({"event": DONE, "done_nodes": done_nodes, "time": time.time()})
    except BaseException as exc:  # report everything, KeyboardInterrupt included
        try:
            conn.send({"event": FAILED, **failure(exc)})
        except OSError:  # the parent is gone
            pass
    finally:
        logging.shutdown()
        conn.close()
        log_stream.flush()


def execute_group(group: GroupPayload, hook_manager, notify, between_nodes=None) -> list[str]:
    """Run the group's nodes in topological order with Kedro's `Task` (hooks included),
    releasing datasets as SequentialRunner does; `notify(event, **info)` hears each node
    start and finish (with its `metrics`: node_metrics.NodeMeter's figures plus what the
    project published); `between_nodes()` runs before each node. Returns the completed
    nodes; a failing node raises `GroupFailed`."""
    logger = logging.getLogger(__name__)
    pipeline = Pipeline(group.nodes)  # topologically sorted
    load_counts = Counter(chain.from_iterable(n.inputs for n in pipeline.nodes))
    total = len(pipeline.nodes)
    done_nodes: list[str] = []
    for i, node in enumerate(pipeline.nodes, start=1):
        if between_nodes is not None:
            between_nodes()
        logger.info("Running node %d/%d: %s", i, total, node.name)
        notify(NODE_START, node=node.name, time=time.time())
        meter = NodeMeter()
        try:
            with meter:
                Task(
                    node=node,
                    catalog=group.catalog,
                    is_async=group.is_async,
                    hook_manager=hook_manager,
                    run_id=group.run_id,
                ).execute()
        except BaseException as exc:  # KeyboardInterrupt included: reported as a failure
            notify(NODE_FAILED, node=node.name, time=time.time(), metrics=meter.figures(take()))
            raise GroupFailed(node.name, done_nodes) from exc
        logger.info("Completed node: %s", node.name)
        logger.info("Completed %d out of %d tasks", i, total)
        # Same bookkeeping as SequentialRunner: free what no later node needs.
        release_datasets(node, group.catalog, load_counts, pipeline)
        done_nodes.append(node.name)
        notify(NODE_DONE, node=node.name, time=time.time(), metrics=meter.figures(take()))
    return done_nodes


class GroupFailed(Exception):
    """A node of the group raised (the cause is `__cause__`)."""

    def __init__(self, node: str, done_nodes: list[str]):
        super().__init__(node)
        self.node, self.done_nodes = node, list(done_nodes)


def failure(exc: BaseException) -> dict:
    """What a worker reports about a failed group: the error (its root cause first, see
    errors.describe), the node, the traceback."""
    node, done = None, []
    if isinstance(exc, GroupFailed):
        node, done, exc = exc.node, exc.done_nodes, exc.__cause__ or exc
    error = describe(exc)
    logging.getLogger(__name__).error(
        "Namespace failed%s: %s",
        f" in node {node}" if node else "",
        error,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return {
        "error": error,
        "node": node,
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "done_nodes": done,
        "time": time.time(),
    }


def _redirect_output(log_path: str):
    """Send this process's stdout, stderr (C level too) and logging to `log_path`."""
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    stream = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    sys.stdout = sys.stderr = stream
    _log_to(stream)
    return stream


def _log_to(stream) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


def _bootstrap(package_name: str | None, log_stream=None):
    """Configure the project (when there is one) and build its hook manager.

    Mirrors `KedroSession`: hooks from `settings.HOOKS` plus plugin entry points, minus
    `settings.DISABLE_HOOKS_FOR_PLUGINS`.
    """
    from kedro.framework import project

    if package_name and project.PACKAGE_NAME != package_name:  # a fork server's child has it
        configure_project(package_name)
        validate_settings()
    # The project's logging configuration replaces the root handlers: point them back
    # at the log file.
    if log_stream is not None:
        _log_to(log_stream)

    return build_hook_manager(settings.HOOKS, settings.DISABLE_HOOKS_FOR_PLUGINS)


def _set_threads(threads: int) -> None:
    # OMP_NUM_THREADS (set before the process started) covers a torch imported later;
    # a torch already imported by the nodes' modules is told directly (from the thread
    # that runs the nodes: OpenMP's thread count is per calling thread).
    os.environ.update({var: str(threads) for var in THREAD_ENV_VARS})
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


class ThreadShare:
    """CPU threads the parent hands over when another slot's cores fall idle.

    The parent writes the count into `box` (a shared int) and sends THREADS_SIGNAL. The
    handler runs in this process's main thread, which runs the nodes, between two Python
    bytecodes, so never inside a torch op: the new count applies to the running node's next
    op, not only from the next node on (a causal node can run for many minutes). Before
    each node the box is read again, in case no signal could be sent. Nothing is logged
    in the handler (it may interrupt a log call); the change is logged at the next node.
    """

    def __init__(self, box, threads: int):
        self.box, self.threads, self.noted = box, threads, threads
        if box is not None and THREADS_SIGNAL is not None:
            signal.signal(THREADS_SIGNAL, self.apply)
            signal.siginterrupt(THREADS_SIGNAL, False)  # restart interrupted system calls

    def apply(self, *_signal_args) -> None:
        n = self.box.value if self.box is not None else 0
        if n > 0 and n != self.threads:
            _set_threads(n)
            self.threads = n

    def between_nodes(self) -> None:
        self.apply()
        if self.threads != self.noted:
            self.noted = self.threads
            logging.getLogger(__name__).info(
                "Now %d CPU thread(s): cores of a finished slot are idle", self.threads
            )
