"""Node functions and hooks for the runner tests.

They live in an importable module because spawned workers (GPU slots, start_method=spawn)
import them by name when they unpickle the nodes.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from kedro.framework.hooks import hook_impl
from kedro.io import AbstractDataset

log = logging.getLogger(__name__)


def _stamp(**values):
    return {"pid": os.getpid(), "start": values.pop("start"), "end": time.time(), **values}


def make_base(n: int) -> dict:
    start = time.time()
    return _stamp(start=start, value=n)


def scale(base: dict, factor: float, seconds: float) -> dict:
    """A namespace's first node: sleeps a little so that overlap is measurable."""
    start = time.time()
    log.info("scaling %s by %s", base["value"], factor)
    if factor < 0:
        raise ValueError(f"boom: negative factor {factor}")
    time.sleep(seconds)
    return _stamp(start=start, value=base["value"] * factor)


def finish(mid: dict) -> dict:
    """A namespace's last node; `mid` stays in the worker (a MemoryDataset)."""
    start = time.time()
    return _stamp(start=start, value=mid["value"] + 1, mid_start=mid["start"], mid_pid=mid["pid"])


def slot_info(base: dict) -> dict:
    """What the worker was given: its slot, visible GPUs and torch threads."""
    import torch

    return {
        "pid": os.getpid(),
        "slot": os.environ.get("KEDRO_DEVICE_SLOT"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def combine(*outs: dict) -> dict:
    start = time.time()
    return _stamp(start=start, value=sum(o["value"] for o in outs))


def summarise_one(out: dict) -> dict:
    start = time.time()
    return _stamp(start=start, value=out["value"])


class RecordingHooks:
    """Logs every node hook call; in a worker the lines land in the namespace's log."""

    @hook_impl
    def before_node_run(self, node, inputs):
        log.info("HOOK before_node_run %s pid=%d", node.name, os.getpid())

    @hook_impl
    def after_node_run(self, node, outputs):
        log.info("HOOK after_node_run %s pid=%d", node.name, os.getpid())

    @hook_impl
    def on_node_error(self, node, error):
        log.info("HOOK on_node_error %s %s", node.name, type(error).__name__)


def broken_base(n: int) -> dict:
    raise RuntimeError("no data today")


def die(base: dict) -> dict:
    """Ends the process the way the OOM killer would: no exception, no report."""
    os._exit(3)


def scale_by_model(base: dict, model: dict, seconds: float) -> dict:
    """A namespace node that reads its model's parameter block (where `memory_gb` is)."""
    start = time.time()
    time.sleep(seconds)
    return _stamp(
        start=start, value=base["value"] * model["factor"], slot=os.environ.get("KEDRO_DEVICE_SLOT")
    )


def torch_threads(_upstream, wait_for: str = "", then_s: float = 0.0, mark: str = "") -> dict:
    """torch's CPU threads as this node starts and as it ends (then runs an op on them).
    With `mark`, creates that file once started; with `wait_for`, waits (up to a minute)
    for that file to exist and then `then_s` more seconds."""
    import torch

    start = torch.get_num_threads()
    if mark:
        Path(mark).touch()
    deadline = time.time() + 60
    while wait_for and not os.path.exists(wait_for) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(then_s)
    end = torch.get_num_threads()
    (torch.ones(512, 512) * 2).sum()  # an op big enough to run on all `end` threads
    return {"start": start, "end": end}


def report(base: dict, **outs: dict) -> dict:
    """A shared node downstream of every namespace that takes them through **kwargs (as the
    project's build_report does): the runner may run it on the namespaces that finished."""
    start = time.time()
    return _stamp(start=start, models=sorted(outs), value=sum(o["value"] for o in outs.values()))


def report_named(base: dict, m1__out: dict, m2__out: dict) -> dict:
    """The same with named parameters: it needs every namespace, so it is skipped."""
    return report(base, m1__out=m1__out, m2__out=m2__out)


def listening_sockets(_upstream) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every socket listening in this process and its children
    (a local Dask cluster's scheduler, dashboard, nannies and workers)."""
    import psutil

    me = psutil.Process(os.getpid())
    found = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:  # exited meanwhile
            continue
        found += [
            (proc.pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN
        ]
    return found


class ModelUnavailableError(RuntimeError):
    """As the project's ModelLoadError: names the model, quotes the low-level cause."""


class BrokenModelOutput(AbstractDataset):
    """A dataset whose save loads a model from a path that is not there, as a capture
    dataset does: the error reaches the runner wrapped twice by Kedro (the dataset's save,
    then the catalog's), with a long repr in front of the cause."""

    def __init__(self, model: str, path: str):
        self._model, self._path = model, path

    def _describe(self) -> dict:
        return {"model": self._model, "path": self._path, "note": "x" * 120}

    def load(self):
        raise NotImplementedError

    def save(self, data) -> None:
        try:
            open(os.path.join(self._path, "config.json"))  # noqa: SIM115 - it is not there
        except OSError as exc:
            raise ModelUnavailableError(
                f"model {self._model!r} ({self._path}) cannot be loaded: {exc}. "
                "It is not a local folder."
            ) from exc
