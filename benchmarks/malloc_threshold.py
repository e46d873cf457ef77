"""Why kedro_device_runner/heap.py exists: Dask's MALLOC_TRIM_THRESHOLD_ and tensor \
allocation speed.

Runs the runner benchmark's per-model loop (benchmarks/runner.py `forward_passes`, one
torch thread) in fresh processes: plain; with MALLOC_TRIM_THRESHOLD_=65536 as Dask's
nanny sets it; and with the variable set but `restore_dynamic_thresholds()` called first,
as a DaskRunner task does. Three alternating repeats, fastest of each printed.

    .venv/bin/python benchmarks/malloc_threshold.py [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, time, torch
sys.path.insert(0, {here!r})
from runner import forward_passes, make_weights
if sys.argv[1] == "restore":
    from kedro_device_runner.heap import restore_dynamic_thresholds
    assert restore_dynamic_thresholds()
torch.set_num_threads(1)
weights = make_weights(0)
t = time.perf_counter(); forward_passes(weights, int(sys.argv[2]), 1.0); \
print(time.perf_counter() - t)
"""


def run(mode: str, steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    if mode != "plain":
        env["MALLOC_TRIM_THRESHOLD_"] = "65536"
    code = CHILD.format(here=str(Path(__file__).parent))
    out = subprocess.run(
        [sys.executable, "-c", code, mode, str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    modes = {
        "plain": "no variable",
        "dask": "MALLOC_TRIM_THRESHOLD_=65536 (Dask's nanny)",
        "restore": "the variable, then restore_dynamic_thresholds()",
    }
    times = {m: [] for m in modes}
    for _ in range(3):
        for m in modes:
            times[m].append(run(m, args.steps))
    base = min(times["plain"])
    print(f"{args.steps} steps of the runner benchmark's model loop, 1 torch thread, fastest of 3:")
    for m, label in modes.items():
        print(f"  {label:50s} {min(times[m]):6.2f} s  {min(times[m]) / base:4.2f}x")


if __name__ == "__main__":
    main()
