"""benchmarks/gpu_smoke.py, exercised on CPU: it says plainly when no GPU is visible, and
`--cpu` runs the same phase4 on two CPU slots (two families, float32 to keep it short:
bf16 on CPU is covered by tests/test_cuda_paths.py). The GPU run itself needs a GPU."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from tests.tiny_project import REPO, kedro_env

SCRIPT = str(REPO / "benchmarks" / "gpu_smoke.py")
NO_GPU = "no CUDA device visible: nothing run on GPU"


def smoke(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        cwd=REPO,
        env=kedro_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has a GPU: the smoke test would run on it"
)
def test_without_a_gpu_it_says_so_and_runs_nothing():
    run = smoke()
    assert run.returncode == 0 and run.stdout.strip() == NO_GPU


def test_unknown_family_is_refused_before_any_work():
    run = smoke("--cpu", "--families", "gpt2,bert")
    assert run.returncode == 2 and "unknown ['bert']" in run.stderr


@pytest.mark.slow
def test_cpu_run_prints_each_slot_with_timings_and_memory():
    run = smoke("--cpu", "--families", "gpt2,llama", "--dtype", "float32")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    out = run.stdout
    if not torch.cuda.is_available():
        assert NO_GPU in out
    for ns in ("tiny_gpt2", "tiny_llama"):
        row = next(line for line in out.splitlines() if line.startswith(ns))
        # slot, status, wall, peak memory (RSS on CPU), estimate, device its nodes ran on
        assert re.match(
            rf"{ns}\s+cpu:\d\s+done\s+\d+\.\ds\s+[\d,]+ MiB\s+[\d,]+ MiB\s+cpu\s+{ns}\.\w+ \(", row
        ), row
    assert "phase4 wall-clock" in out
