"""Every module a script may import first imports on its own: an import cycle between
packages only fails when the import order enters it from one side (a benchmark script
importing activations.capture before anything else did: scoring.stacked once imported
the sae package, whose training code imports activations, which imports scoring)."""

import subprocess
import sys
from pathlib import Path

# the modules benchmarks/ and the pipelines import first, and every package's entry
FIRST = [
    "sae_reasoning.activations",
    "sae_reasoning.activations.capture",
    "sae_reasoning.activations.store",
    "sae_reasoning.benchmarks.sources",
    "sae_reasoning.causal.analysis",
    "sae_reasoning.causal.splice",
    "sae_reasoning.models",
    "sae_reasoning.models.cached_forward",
    "sae_reasoning.sae",
    "sae_reasoning.sae.train",
    "sae_reasoning.scoring",
    "sae_reasoning.scoring.stacked",
    "sae_reasoning.stage_limits",
    "sae_reasoning.pipeline_registry",
]


def test_each_module_imports_first_in_a_fresh_interpreter():
    src = str(Path(__file__).resolve().parents[1] / "src")
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-c", f"import {m}"],
            env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in FIRST
    }
    failed = {m: p.communicate(timeout=300)[1].strip().splitlines()[-1:] for m, p in procs.items()}
    failed = {m: err for m, err in failed.items() if procs[m].returncode}
    assert not failed, failed
