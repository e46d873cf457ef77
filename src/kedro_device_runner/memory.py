"""How much device memory a namespace group needs, and how much each slot has.

A group's need is, in order of precedence:
  1. `memory_gb` in the group's `params:models.<namespace>` parameter, when the group
     reads it: the user knows best (quantised weights, long prompts, a measured peak);
  2. the project's estimator, when one is configured (the runner's `memory_estimator`,
     else the project setting `DEVICE_RUNNER_MEMORY_ESTIMATOR`): a callable
     `(namespace, inputs, catalog) -> MemoryNeed | None`, e.g. from a model's config;
  3. unknown: the group is placed without a memory check.

A slot's memory: a GPU's free memory (`torch.cuda.mem_get_info`, asked in a short child
process so that the parent never holds a CUDA context on any GPU), or for CPU slots the
available RAM divided among them; either can be set with the runner's `memory_gb`.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import click
from kedro.framework import project

from kedro_device_runner.slots import _SEPARATORS, Slot

if TYPE_CHECKING:
    from kedro.io import CatalogProtocol

GiB = 2**30
# The project setting (settings.py) naming the default estimator, "package.module:function".
ESTIMATOR_SETTING = "DEVICE_RUNNER_MEMORY_ESTIMATOR"
log = logging.getLogger(__name__)

Estimator = Callable[[str, set, Any], "MemoryNeed | None"]


class InsufficientMemoryError(click.ClickException, ValueError):
    """A namespace group fits no slot: raised before any node runs (the Kedro CLI shows
    the message alone, without a traceback)."""


@dataclass(frozen=True)
class MemoryNeed:
    namespace: str
    bytes: int
    model: str | None  # what the need is for, as the message names it
    how: str  # "memory_gb in params:models.<ns>" or the estimate's breakdown

    @property
    def gb(self) -> float:
        return self.bytes / GiB


def gb(n_bytes: int | None) -> str:
    return "?" if n_bytes is None else f"{n_bytes / GiB:.1f} GiB"


# ----------------------------------------------------------------- group needs


def estimate_group_memory(
    namespace: str,
    inputs: set[str],
    catalog: CatalogProtocol,
    estimator: Estimator | None = None,
) -> MemoryNeed | None:
    """The memory the group `namespace` (whose nodes read `inputs`) needs on its slot."""
    declared = declared_need(namespace, group_param(catalog, f"params:models.{namespace}", inputs))
    if declared is not None:
        return declared
    return estimator(namespace, inputs, catalog) if estimator is not None else None


def declared_need(namespace: str, params: Any) -> MemoryNeed | None:
    """Rule 1: `memory_gb` in the namespace's block of the models parameter, when set
    (also what a project's planner shows, so both name the same need)."""
    if not isinstance(params, dict) or params.get("memory_gb") is None:
        return None
    return MemoryNeed(
        namespace,
        int(float(params["memory_gb"]) * GiB),
        namespace,
        f"memory_gb in params:models.{namespace}",
    )


def group_param(catalog: CatalogProtocol, name: str, inputs: set[str]) -> Any:
    """Parameter `name` when the group reads it (`inputs`), else None."""
    if name not in inputs:
        return None
    try:  # the dataset's own load: the catalog would log every parameter it hands out
        return catalog.get(name, fallback_to_runtime_pattern=True).load()
    except Exception:  # noqa: BLE001 - a missing parameter is just no information
        return None


def load_estimator(spec: str | Estimator | None) -> Estimator | None:
    """The estimator `spec` names ("package.module:function", or a callable); None: the
    project's setting, else no estimator."""
    if spec is None:
        spec = project.settings.get(ESTIMATOR_SETTING)
    if spec is None or callable(spec):
        return spec
    module, _, name = str(spec).partition(":")
    if not name:
        raise ValueError(f"memory_estimator={spec!r}: expected 'package.module:function'.")
    return getattr(importlib.import_module(module), name)


# ----------------------------------------------------------------- slot memory


def parse_memory_gb(spec: str | float | Sequence | None, n: int) -> list[float | None] | None:
    """The runner's `memory_gb`: one number for every slot, or one per slot ("8;16")."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "auto")):
        return None
    if isinstance(spec, int | float):
        values = [float(spec)]
    elif isinstance(spec, str):
        values = [float(tok) for tok in _SEPARATORS.split(spec.strip()) if tok]
    else:
        values = [float(v) for v in spec]
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"memory_gb={spec!r}: {len(values)} values for {n} slot(s).")
    return values


def with_memory(slots: list[Slot], memory_gb: list[float | None] | None) -> list[Slot]:
    """The slots with their memory: configured, else measured."""
    if memory_gb is not None:
        return [replace(s, memory_bytes=int(m * GiB)) for s, m in zip(slots, memory_gb)]
    gpu_ids = sorted({s.cuda_visible_devices for s in slots if s.kind == "cuda"})
    free_gpu = gpu_free_memory(gpu_ids) if gpu_ids else {}
    n_cpu = sum(s.kind == "cpu" for s in slots)
    # CPU slots share one pool of RAM: each may count on its share of what is available.
    cpu_share = cpu_available_memory() // max(1, n_cpu)
    return [
        replace(
            s,
            memory_bytes=(free_gpu.get(s.cuda_visible_devices) if s.kind == "cuda" else cpu_share),
        )
        for s in slots
    ]


def cpu_available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


_GPU_PROBE = """
import json, torch
print(json.dumps([torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]))
"""


def gpu_free_memory(ids: list[str]) -> dict[str, int]:
    """Free bytes of each GPU in `ids` (CUDA_VISIBLE_DEVICES tokens), from a child process.

    The child sees exactly these GPUs, in this order, as the workers will; its CUDA
    context goes away with it. Empty when torch cannot tell (no CUDA build).
    """
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(ids)}
    try:
        out = subprocess.run(
            [sys.executable, "-c", _GPU_PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        free = json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        log.warning("Could not measure GPU memory (%s): slots have no memory limit.", exc)
        return {}
    return dict(zip(ids, free))


def worker_memory(gpu: bool) -> int | None:
    """Free device memory as seen by this process (run on a Dask worker).

    GPU: the first visible GPU's free memory (a dask-cuda worker sees one), measured in a
    child process. CPU: the worker's memory limit, else the host's available RAM.
    """
    if gpu:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
        return gpu_free_memory([visible]).get(visible)
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):
        limit = None
    return int(limit) if limit else cpu_available_memory()


# ------------------------------------------------------------------- placement


def best_fit(need: MemoryNeed | None, free: list[Slot]) -> Slot | None:
    """The free slot with the least memory that still fits `need` (bigger ones stay free
    for bigger models); None when none of the free slots fits."""
    fitting = [s for s in free if fits(need, s.memory_bytes)]
    if not fitting:
        return None
    return min(fitting, key=lambda s: (s.memory_bytes is None, s.memory_bytes or 0))


def fits(need: MemoryNeed | None, capacity: int | None) -> bool:
    return need is None or capacity is None or need.bytes <= capacity


def check_fits_somewhere(
    needs: dict[str, MemoryNeed | None], places: dict[str, int | None]
) -> None:
    """Raise before any work when a group's need exceeds every slot's (or worker's) memory."""
    if not places or any(v is None for v in places.values()):
        return
    largest_name, largest = max(places.items(), key=lambda kv: kv[1])
    problems = [
        f"  namespace '{n.namespace}': model {n.model} needs ~{gb(n.bytes)} ({n.how}); "
        f"the largest slot, {largest_name}, has {gb(largest)}"
        for n in needs.values()
        if n is not None and n.bytes > largest
    ]
    if problems:
        raise InsufficientMemoryError(
            "Some namespaces fit on no device slot; nothing was run:\n"
            + "\n".join(problems)
            + "\nUse a device with more memory, a smaller dtype, or fewer slots per device; "
            "if the estimate is wrong, set `memory_gb` in that model's block of the `models` "
            "parameter (or the runner's `memory_gb` for the slots), or `memory=off`."
        )
