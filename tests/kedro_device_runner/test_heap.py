"""Dask's MALLOC_TRIM_THRESHOLD_ is kept away from model work (kedro_device_runner/heap.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from kedro_device_runner.heap import TRIM_VARIABLE, no_trim_threshold

# Counts how many of a 2 MiB tensor's allocations glibc serves with a fresh mmap, on the
# first allocation and again after freeing it (glibc's dynamic threshold normally rises
# after the first free, so the second one comes from the heap).
PROBE = textwrap.dedent("""
    import ctypes, sys, torch
    class MI2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks \
fordblks keepcost".split()]
    libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = MI2
    def mmapped():
        before = libc.mallinfo2().hblks
        t = torch.empty(2 << 20, dtype=torch.uint8)
        n = libc.mallinfo2().hblks - before
        del t
        return n
    if sys.argv[1] == "restore":
        from kedro_device_runner.heap import restore_dynamic_thresholds
        assert restore_dynamic_thresholds()
    print(mmapped(), mmapped())
""")


def _probe(mode: str, trim: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != TRIM_VARIABLE}
    if trim is not None:
        env[TRIM_VARIABLE] = trim
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split("\n")[-2].strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_trim_variable_forces_mmap_and_restore_undoes_it():
    assert _probe("plain", None) == "1 0"  # glibc's dynamic threshold at work
    assert _probe("plain", "65536") == "1 1"  # Dask's setting: every large tensor mmapped
    assert _probe("restore", "65536") == "0 0"  # restored: served from the heap


def test_local_cluster_workers_start_without_the_variable(monkeypatch):
    from distributed import Client, LocalCluster

    # As an earlier LocalCluster's nannies leave it in the process that started them.
    monkeypatch.setenv(TRIM_VARIABLE, "65536")
    before = dict(os.environ)
    with no_trim_threshold():
        cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        )
    try:
        with Client(cluster) as client:
            env = next(iter(client.run(lambda: dict(os.environ)).values()))
        assert TRIM_VARIABLE not in env
        assert env.get("OMP_NUM_THREADS") == "1"  # the rest of Dask's settings stay
        assert dict(os.environ) == before  # this process's environment untouched
    finally:
        cluster.close()
