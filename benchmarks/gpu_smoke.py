"""GPU smoke test: tiny random models of the five seed families through phase4 on every
visible GPU with DeviceSlotRunner, printing per-slot timings and peak memory.

A copy of the project gets a Kedro env `conf/tiny` (tests/tiny_project.py) with one namespace
per family (gpt2, gpt_neox, gemma, phi, llama; random-init, 4 layers, d_model 64), the
paper recipe's bf16 model forward and bf16 activation storage, and runs
`kedro run --pipeline=phase4 --runner=kedro_device_runner.DeviceSlotRunner` (slots=auto:
one per visible GPU). The runner's timeline (logs/<run>/timeline.json) gives each
namespace's slot, wall time, peak memory (CUDA max allocated on a GPU) and the devices its
nodes ran on; the script fails if a namespace did not run on a GPU.

Without a GPU it says so and runs nothing, unless `--cpu`: then the same run on two CPU
slots, so the script itself is exercised (tests/test_gpu_smoke.py).

    .venv/bin/python benchmarks/gpu_smoke.py [--cpu] [--families gpt2,llama] [--dtype float32]
        [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/ holds the tiny-model and tiny-project builders

from tests.tiny import FAMILIES, save_tiny_model
from tests.tiny_project import KEDRO, copy_project, kedro_env, make_tiny_env

NO_GPU = "no CUDA device visible: nothing run on GPU"
RUNNER = "kedro_device_runner.DeviceSlotRunner"
SMOKE_CORPUS_TOKENS = 20000  # the corpus path runs; its size is not what a smoke test checks


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def build_project(root: Path, families: list[str], dtype: str) -> Path:
    """The project copy with conf/tiny: namespace tiny_<family>, hook point after block 1."""
    models_dir = root / "models"
    dirs = {f: save_tiny_model(f, models_dir / f) for f in families}
    project = copy_project(root / "project")
    make_tiny_env(
        project,
        dirs,
        models={f"tiny_{f}": (f, [1]) for f in families},
        overrides={"capture": {"dtype": dtype, "corpus": {"max_tokens": SMOKE_CORPUS_TOKENS}}},
    )
    import yaml

    catalog_file = project / "conf" / "tiny" / "catalog.yml"
    catalog = yaml.safe_load(catalog_file.read_text())
    for name, entry in catalog.items():
        if name.endswith(".model"):
            entry["dtype"] = dtype  # the model's forward in the recipe's dtype, as conf/paper
    catalog_file.write_text(yaml.safe_dump(catalog))
    return project


def run_phase4(project: Path, slots: str, cpu: bool, timeout: float) -> subprocess.CompletedProcess:
    env = kedro_env()
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU slots even on a GPU machine
    cmd = [
        KEDRO,
        "run",
        "--pipeline=phase4",
        "--env=tiny",
        f"--runner={RUNNER}",
        f"--runner-params=slots={slots},live=log",
    ]
    return subprocess.run(
        cmd, cwd=project, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def latest_timeline(project: Path) -> dict:
    files = sorted((project / "logs").glob("*/timeline.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no logs/<run>/timeline.json under {project}: did the runner start?")
    return json.loads(files[-1].read_text())


def mib(n: int | None) -> str:
    return "-" if not n else f"{n / 2**20:,.0f} MiB"


def slot_table(timeline: dict) -> list[dict]:
    """One row per namespace: slot, status, wall, peak memory, devices its nodes ran on."""
    rows = []
    for unit in timeline["units"]:
        if unit.get("kind") != "namespace":
            continue
        res = unit.get("resources") or {}
        nodes = unit.get("node_resources") or {}
        slowest = max(nodes.items(), key=lambda kv: kv[1].get("wall_s", 0), default=(None, {}))
        rows.append(
            {
                "namespace": unit["name"],
                "slot": unit["slot"],
                "status": unit["status"],
                "wall_s": unit.get("wall_s"),
                "peak_memory": res.get("peak_memory_bytes"),
                "memory_need": unit.get("memory_need_bytes"),
                "devices": res.get("devices_used", []),
                "slowest_node": slowest[0],
                "slowest_s": slowest[1].get("wall_s"),
            }
        )
    return rows


def print_table(rows: list[dict], wall: float) -> None:
    head = (
        "namespace",
        "slot",
        "status",
        "wall",
        "peak memory",
        "estimate",
        "ran on",
        "slowest node",
    )
    table = [head] + [
        (
            r["namespace"],
            r["slot"],
            r["status"],
            f"{r['wall_s'] or 0:.1f}s",
            mib(r["peak_memory"]),
            mib(r["memory_need"]),
            ",".join(r["devices"]) or "?",
            f"{r['slowest_node']} ({r['slowest_s'] or 0:.1f}s)" if r["slowest_node"] else "-",
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"phase4 wall-clock (kedro run, start-up included): {wall:.1f}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="with no GPU, run the same on two CPU slots")
    ap.add_argument(
        "--families", default=",".join(FAMILIES), help=f"comma-separated, from {FAMILIES}"
    )
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument(
        "--keep", type=Path, help="build the project here and keep it (default: a temp folder)"
    )
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        ap.error(f"--families: unknown {unknown}; choose from {', '.join(FAMILIES)}")

    n_gpus = 0 if args.cpu else visible_gpus()
    if n_gpus == 0:
        print(
            NO_GPU
            if not args.cpu or visible_gpus() == 0
            else "--cpu: GPUs hidden (CUDA_VISIBLE_DEVICES='')"
        )
        if not args.cpu:
            return 0
    slots = "auto" if n_gpus else "cpu;cpu"
    root = args.keep or Path(tempfile.mkdtemp(prefix="gpu_smoke_"))
    try:
        project = build_project(root, families, args.dtype)
        print(
            f"phase4 on {n_gpus} GPU(s)" if n_gpus else "phase4 on 2 CPU slots",
            f"| families {', '.join(families)} | model and activations in {args.dtype} | {project}",
        )
        t0 = time.perf_counter()
        run = run_phase4(project, slots, cpu=not n_gpus, timeout=args.timeout)
        wall = time.perf_counter() - t0
        if run.returncode != 0:
            print((run.stdout + run.stderr)[-6000:])
            print(f"FAILED: kedro run exited {run.returncode}")
            return 1
        rows = slot_table(latest_timeline(project))
        print_table(rows, wall)
        off_gpu = [
            r["namespace"]
            for r in rows
            if n_gpus and not any(d.startswith("cuda") for d in r["devices"])
        ]
        if off_gpu or len(rows) != len(families):
            print(
                f"FAILED: namespaces not run on a GPU: {off_gpu}"
                if off_gpu
                else f"FAILED: {len(rows)} namespaces in the timeline for {len(families)} families"
            )
            return 1
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    sys.exit(main())
