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
    return _stamp(start=start, value=base["value"] * model["factor"],
                  slot=os.environ.get("KEDRO_DEVICE_SLOT"))


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
