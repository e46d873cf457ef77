"""glibc heap settings for model work inside Dask workers.

Dask's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536
(`distributed.nanny.pre-spawn-environ`). Setting any malloc threshold switches off
glibc's dynamic mmap threshold, so every tensor over 128 KiB becomes a fresh mmap, page
faults and an munmap. A forward pass allocates such tensors all the time: the runner
benchmark's per-model loop runs 2.1x slower with that variable set (9.6 s against 4.5 s for
200 steps, `benchmarks/malloc_threshold.py`) and at full speed again with the thresholds below.

`LocalCluster`s the runner starts leave the variable out (`no_trim_threshold`); on a
cluster someone else started, the group's task restores a plain process's behaviour
(`restore_dynamic_thresholds`) before any model work.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)

TRIM_VARIABLE = "MALLOC_TRIM_THRESHOLD_"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Where glibc's dynamic thresholds end up for a process that frees large blocks: the
# mmap threshold's ceiling on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX) and twice that for trim.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

_done = False


def restore_dynamic_thresholds() -> bool:
    """Undo a MALLOC_TRIM_THRESHOLD_ this process started with; True when it changed anything."""
    global _done
    if _done or TRIM_VARIABLE not in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc: the variable meant nothing here
        return False
    ok = (
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
    _done = ok
    if ok:
        log.info(
            "%s=%s in this worker's environment: malloc thresholds set to mmap %d MiB, "
            "trim %d MiB (small mmap thresholds slow tensor allocation)",
            TRIM_VARIABLE,
            os.environ[TRIM_VARIABLE],
            MMAP_THRESHOLD >> 20,
            TRIM_THRESHOLD >> 20,
        )
    return ok


@contextlib.contextmanager
def no_trim_threshold() -> Iterator[None]:
    """Start Dask nannies without MALLOC_TRIM_THRESHOLD_, and keep this process's
    environment as it was (a LocalCluster's nannies write their pre-spawn variables into
    the process that starts them, which later child processes would inherit)."""
    import dask

    saved = dict(os.environ)
    # Left here by an earlier cluster's nannies: children would inherit it.
    os.environ.pop(TRIM_VARIABLE, None)
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{TRIM_VARIABLE}": None}):
            yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)
