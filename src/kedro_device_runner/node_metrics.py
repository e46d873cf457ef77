"""What one node cost: wall time, device, peak memory, device-hours, and whatever else
the project reports for it (e.g. tokens).

Generic over Kedro projects: no project import, and torch only if the process already
imported it. The runner measures every node itself (`NodeMeter` around `Task.execute`),
so any project's timeline carries these figures. A project adds its own numbers with
`publish(tokens=...)` from code that runs inside the node (its function, a dataset, a
node hook); the runner `take`s them when the node ends. A process runs one node at a
time, so a module-level dict is the whole channel: nothing to configure, nothing to
pickle, and a project that never publishes loses nothing.

Peak memory: CUDA max allocated when the node used a GPU (`torch.cuda` initialised in
this process with memory allocated during the node), else the process's peak RSS during
the node, sampled by one light thread (`ru_maxrss` is a lifetime peak, useless per node).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import psutil

RSS_INTERVAL_S = 0.05  # 20 samples/s: a psutil read costs microseconds

_published: dict = {}


def publish(**metrics) -> None:
    """Per-node figures for the node running now in this process (the latest value of
    each key counts)."""
    _published.update(metrics)


def take() -> dict:
    """What was published since the last `take` (and forget it)."""
    out = dict(_published)
    _published.clear()
    return out


class _PeakRSS:
    """One sampler thread per process, shared by every open window (nested meters: the
    runner's around a node, a hook's inside it). The thread stops when no window is open;
    a forked child starts its own (threads do not survive a fork)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._peaks: dict[int, int] = {}
        self._next = 0
        self._thread: threading.Thread | None = None

    def open(self) -> int:
        rss = _rss()
        with self._lock:
            self._next += 1
            self._peaks[self._next] = rss
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
                self._thread.start()
            return self._next

    def close(self, window: int) -> int:
        rss = _rss()
        with self._lock:
            return max(self._peaks.pop(window, 0), rss)

    def _run(self) -> None:
        while True:
            time.sleep(RSS_INTERVAL_S)
            rss = _rss()
            with self._lock:
                if not self._peaks:
                    self._thread = None
                    return
                for window, peak in self._peaks.items():
                    if rss > peak:
                        self._peaks[window] = rss

    def after_fork(self) -> None:
        # The child has no sampler thread, and the lock may have been held by it.
        self._lock, self._thread, self._peaks = threading.Lock(), None, {}


_PEAK_RSS = _PeakRSS()
_cuda_windows = 0  # open meters: only the outermost resets CUDA's peak counter
_process: dict[int, psutil.Process] = {}


def _after_fork() -> None:
    global _cuda_windows
    _PEAK_RSS.after_fork()
    _cuda_windows = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _rss() -> int:
    pid = os.getpid()
    if pid not in _process:
        _process.clear()
        _process[pid] = psutil.Process(pid)
    return _process[pid].memory_info().rss


def _cuda():
    torch = sys.modules.get("torch")  # never import it here (see worker.py)
    if torch is None or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def cuda_device_label(index: int) -> str:
    """'cuda:N' with N the physical card (CUDA_VISIBLE_DEVICES maps the process's index)."""
    visible = [
        v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()
    ]
    physical = visible[index] if index < len(visible) and visible[index].isdigit() else str(index)
    return f"cuda:{physical}"


class NodeMeter:
    """`with NodeMeter() as m: ...` (or `m.start()` ... `m.stop(failed)`), then
    `m.figures()`; the status is "failed" when the block raised."""

    def __init__(self):
        self.figures_: dict | None = None

    def start(self) -> NodeMeter:
        global _cuda_windows
        cuda = _cuda()
        if cuda is not None and _cuda_windows == 0:
            cuda.reset_peak_memory_stats()
        _cuda_windows += 1
        self._started_at, self._t0 = time.time(), time.perf_counter()
        self._window = _PEAK_RSS.open()
        self._rss0 = _rss()
        return self

    def stop(self, failed: bool = False) -> dict:
        global _cuda_windows
        wall = round(time.perf_counter() - self._t0, 4)
        rss = _PEAK_RSS.close(self._window)
        _cuda_windows = max(0, _cuda_windows - 1)
        cuda = _cuda()
        gpu_peak = cuda.max_memory_allocated() if cuda is not None else 0
        on_gpu = gpu_peak > 0
        index = cuda.current_device() if on_gpu else None
        self.figures_ = {
            "status": "failed" if failed else "done",
            "started_at": self._started_at,
            "wall_s": wall,
            "device": cuda_device_label(index) if on_gpu else "cpu",
            "device_name": cuda.get_device_name(index) if on_gpu else "",
            "devices": 1,  # a node runs on the one device (or CPU slot) its process holds
            "peak_memory_bytes": int(gpu_peak if on_gpu else rss),
            "peak_rss_bytes": int(rss),
            "rss_at_start_bytes": int(self._rss0),
            "device_hours": wall * 1 / 3600.0,  # x the devices held (1)
        }
        return self.figures_

    def __enter__(self) -> NodeMeter:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop(failed=exc_type is not None)

    def figures(self, extra: dict | None = None) -> dict:
        return {**(self.figures_ or {}), **(extra or {})}


SUMMED = ("wall_s", "device_hours", "tokens")


def totals(per_node: dict[str, dict]) -> dict:
    """A unit's (or run's) figures from its nodes': sums of wall, device-hours and tokens,
    the highest peak memory, the devices used."""
    rows = list(per_node.values())
    out: dict = {"nodes": len(rows)}
    for key in SUMMED:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = round(sum(values), 6)
    peaks = [r["peak_memory_bytes"] for r in rows if r.get("peak_memory_bytes")]
    if peaks:
        out["peak_memory_bytes"] = max(peaks)
    out["devices_used"] = sorted({r["device"] for r in rows if r.get("device")})
    return out
