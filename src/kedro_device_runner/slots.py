"""Device slots: where a namespace group runs (one GPU, or a share of the CPU cores).

A slot is described to the worker process only through its environment, set before the
process starts (and so before torch is imported there): `CUDA_VISIBLE_DEVICES` shows a GPU
worker its one GPU and hides every GPU from a CPU worker; `OMP_NUM_THREADS` and friends
give it its share of the cores. Code inside the worker stays device-agnostic: it uses
`cuda` when available, else `cpu`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SLOT_ENV_VAR = "KEDRO_DEVICE_SLOT"
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# `--runner-params` splits on commas before the runner sees them, so a slot list given on
# the command line uses one of these separators instead: `slots=cuda:0;cuda:2`.
_SEPARATORS = re.compile(r"[,;+\s]+")


@dataclass(frozen=True)
class Slot:
    """One place to run a namespace group."""

    name: str  # "cuda:0", "cpu:1": what the logs and the summary show
    kind: str  # "cuda" or "cpu"
    cuda_visible_devices: str  # the child's CUDA_VISIBLE_DEVICES ("" hides every GPU)
    threads: int  # CPU threads the worker's torch/BLAS may use
    memory_bytes: int | None = None  # device memory a group may use here (None: unknown)

    def env(self) -> dict[str, str]:
        """Environment variables the worker process must start with."""
        env = {
            "CUDA_VISIBLE_DEVICES": self.cuda_visible_devices,
            SLOT_ENV_VAR: self.name,
        }
        env.update({var: str(self.threads) for var in THREAD_ENV_VARS})
        return env


def cpu_cores() -> int:
    """Cores this process may use (affinity-aware where the OS says so)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """Identifiers of the GPUs this process may use, as a child's CUDA_VISIBLE_DEVICES.

    Uses torch when it is already imported (`device_count` does not create a CUDA context;
    GPU workers are spawned in any case), otherwise `nvidia-smi`, so that detecting GPUs
    never imports torch in the parent.
    """
    torch = sys.modules.get("torch")
    # torch counts what CUDA_VISIBLE_DEVICES leaves visible; nvidia-smi counts every GPU.
    count = torch.cuda.device_count() if torch is not None else _nvidia_smi_count()
    if count == 0:
        return []
    parent_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent_visible is None:
        return [str(i) for i in range(count)]
    ids = [tok.strip() for tok in parent_visible.split(",") if tok.strip()]
    return ids[:count] if torch is not None else ids


def _nvidia_smi_count() -> int:
    exe = shutil.which("nvidia-smi")
    if exe is None:  # a driver without its tools still lists its GPUs here
        gpus = Path("/proc/driver/nvidia/gpus")
        return len(list(gpus.iterdir())) if gpus.is_dir() else 0
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.strip())


def resolve_slots(
    spec: str | int | Sequence[str] | None,
    n_groups: int,
    threads_per_slot: int | None = None,
) -> list[Slot]:
    """Turn the runner's `slots` argument into concrete slots.

    - "auto" / None: one slot per visible GPU; without GPUs, one CPU slot per namespace
      group up to the number of cores.
    - an int N (or "N"): N slots of the automatically chosen kind (the first N GPUs, or N
      CPU slots).
    - "cuda:0,cuda:2", "cpu,cpu", "cpu;cpu" or a list of such tokens ("cuda" = "cuda:0").
    """
    tokens = _tokens(spec)
    gpus: list[str] | None = None
    if tokens in (["auto"], []) or (len(tokens) == 1 and tokens[0].isdigit()):
        gpus = visible_gpus()
        tokens = _auto_tokens(spec, tokens, gpus, n_groups)
    kinds = [_kind(spec, tok) for tok in tokens]
    threads = threads_per_slot or max(1, cpu_cores() // len(kinds))
    slots: list[Slot] = []
    n_cpu = 0
    for kind, index in kinds:
        if kind == "cpu":
            slots.append(Slot(f"cpu:{n_cpu}", "cpu", "", threads))
            n_cpu += 1
            continue
        if gpus is None:
            gpus = visible_gpus()
        if index >= len(gpus):
            raise ValueError(f"slots={spec!r}: cuda:{index} asked for, {len(gpus)} GPU(s) visible.")
        slots.append(Slot(f"cuda:{index}", "cuda", gpus[index], threads))
    return slots


def _auto_tokens(spec, tokens: list[str], gpus: list[str], n_groups: int) -> list[str]:
    """Slots for "auto" or N: every (or the first N) visible GPU, else CPU slots."""
    wanted = int(tokens[0]) if tokens and tokens[0].isdigit() else None
    if wanted is not None and wanted < 1:
        raise ValueError(f"slots={spec!r}: need at least one slot.")
    if gpus:
        n = len(gpus) if wanted is None else wanted
        if n > len(gpus):
            raise ValueError(f"slots={spec!r}: only {len(gpus)} GPU(s) visible.")
        return [f"cuda:{i}" for i in range(n)]
    n = wanted if wanted is not None else max(1, min(n_groups, cpu_cores()))
    return ["cpu"] * n


def _kind(spec, tok: str) -> tuple[str, int]:
    """("cpu" or "cuda", device index) of one slot token ("cuda" = "cuda:0")."""
    m = re.fullmatch(r"(cpu|cuda|gpu)(?::(\d+))?", tok)
    if m is None:
        raise ValueError(
            f"slots={spec!r}: cannot read slot {tok!r}; use 'auto', a number, or a list "
            "like 'cuda:0;cuda:1' or 'cpu;cpu'."
        )
    return ("cpu" if m.group(1) == "cpu" else "cuda"), int(m.group(2) or 0)


def _tokens(spec: str | int | Sequence[str] | None) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, bool):
        raise ValueError(f"slots={spec!r}: expected 'auto', a number or a list of devices.")
    if isinstance(spec, int):
        return [str(spec)]
    if isinstance(spec, str):
        return [tok.lower() for tok in _SEPARATORS.split(spec.strip()) if tok]
    return [tok for item in spec for tok in _tokens(str(item))]
