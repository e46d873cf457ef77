"""DeviceSlotRunner vs Kedro's SequentialRunner on two model-like namespaces.

Each namespace runs four CPU-bound nodes in a row (as capture -> training -> causal),
shaped like this project's per-model work: a small model's forward passes over batches of
a few prompts (576-wide layers, as SmolLM2-135M), in torch, with however many threads the
process was given. SequentialRunner runs the two
namespaces one after the other in this process, twice: with torch's default threads (every
core: what `kedro run` does) and with one thread per core-share (the same threads each
namespace gets from DeviceSlotRunner, so only the parallelism differs). DeviceSlotRunner
runs them at once, one per CPU slot (cores // 2 threads each), process start-up included:
CPU slots fork their workers from a fork server that the runner starts when it is created
and that imports torch and the project once; in `kedro run` that overlaps the session
loading the project. Here the clock starts once that server is ready, and its start-up
is printed, with the ratio it would give on the clock. `--spawn` starts the workers as
GPU slots do (a fresh interpreter each, imports on the clock).
With `--dask`, DaskRunner also runs them, on a LocalCluster of two single-threaded worker
processes on loopback started before the clock starts with the project's worker preload
(`--preload kedro_device_runner.dask_preload`: a cluster is normally up already; each
task's torch gets cores // 2 threads, as a slot's would).

    .venv/bin/python benchmarks/runner.py [--steps N] [--quick] [--dask] [--spawn]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")

# Imported at the top, as the project's library modules do: a worker imports it while it
# starts up (spawned workers re-import this script), before its group may run.
import torch  # noqa: E402

D_MODEL, N_LAYERS, BATCH = 576, 12, 4
STAGES = 4  # nodes per namespace


def make_weights(seed: int) -> list:
    """Shared upstream node: one small 'model' (weights every namespace starts from)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(D_MODEL, D_MODEL, generator=g) / D_MODEL**0.5 for _ in range(N_LAYERS)]


def forward_passes(weights: list, steps: int, scale: float, previous: dict | None = None) -> dict:
    """One stage of a namespace: `steps` batches through the model, as capture does per
    batch. A namespace is STAGES such nodes in a row (as capture -> training -> causal)."""
    start = time.time()
    g = torch.Generator().manual_seed(
        int(scale * 1000) + len(previous["threads"]) if previous else 0
    )
    total = 0.0
    for _ in range(steps):
        x = torch.randn(BATCH, 32, D_MODEL, generator=g)
        for w in weights:
            x = x + torch.nn.functional.gelu(x @ (w * scale))
            x = torch.nn.functional.layer_norm(x, (D_MODEL,))
        total += float(x.pow(2).mean())
    end = time.time()
    return {
        "start": previous["start"] if previous else start,
        "end": end,
        "busy": (previous["busy"] if previous else 0.0) + end - start,  # seconds in these nodes
        "pid": os.getpid(),
        "threads": (previous["threads"] if previous else []) + [torch.get_num_threads()],
        "value": (previous["value"] if previous else 0.0) + total / steps,
    }


def first_stage(weights: list, steps: int, scale: float) -> dict:
    return forward_passes(weights, steps, scale)


def compare(*results: dict) -> dict:
    """Shared downstream node: reads every namespace's result."""
    return {"values": [r["value"] for r in results], "end": time.time()}


NAMESPACES = ("model_a", "model_b")


def build(workdir: Path, steps: int):
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.pipeline import Pipeline, node, pipeline
    from kedro_datasets.pickle import PickleDataset

    stage_steps = max(1, steps // STAGES)
    per_model = Pipeline(
        [node(first_stage, ["weights", "params:steps", "params:scale"], "stage_1", name="stage_1")]
        + [
            node(
                forward_passes,
                ["weights", "params:steps", "params:scale", f"stage_{i - 1}"],
                "result" if i == STAGES else f"stage_{i}",
                name=f"stage_{i}",
            )
            for i in range(2, STAGES + 1)
        ]
    )
    pipe = Pipeline([node(make_weights, "params:seed", "weights", name="make_weights")])
    for i, ns in enumerate(NAMESPACES):
        pipe += pipeline(
            per_model,
            namespace=ns,
            inputs={"weights"},
            parameters={"params:steps": "params:steps", "params:scale": f"params:scale_{i}"},
        )
    pipe += Pipeline(
        [node(compare, [f"{ns}.result" for ns in NAMESPACES], "comparison", name="compare")]
    )

    def catalog() -> DataCatalog:
        names = ["weights", "comparison", *(f"{ns}.result" for ns in NAMESPACES)]
        datasets = {n: PickleDataset(filepath=str(workdir / "data" / f"{n}.pkl")) for n in names}
        datasets |= {
            "params:seed": MemoryDataset(0),
            "params:steps": MemoryDataset(stage_steps),
            "params:scale_0": MemoryDataset(1.0),
            "params:scale_1": MemoryDataset(1.1),
        }
        return DataCatalog(datasets=datasets)

    return pipe, catalog


def timed_run(runner, pipe, catalog, workdir: Path) -> tuple[float, dict]:
    import pickle

    t0 = time.time()
    runner.run(pipe, catalog, run_id=f"bench-{type(runner).__name__}")
    wall = time.time() - t0
    out = {}
    for ns in NAMESPACES:
        with open(workdir / "data" / f"{ns}.result.pkl", "rb") as f:
            r = pickle.load(f)
        out[ns] = (r["start"] - t0, r["end"] - t0, r["threads"], r["pid"], r["busy"])
    return wall, out


_SPIN = "x = 0\nfor i in range(10_000_000):\n    x += i\n"


def parallel_capacity() -> tuple[float, float]:
    """Control for a shared machine: a pure-Python CPU-bound process alone, then two at
    once. On two free cores the pair takes as long as one (capacity 2x)."""
    import subprocess
    import sys

    def spin(n: int) -> float:
        t0 = time.time()
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(n)]
        for p in procs:
            p.wait()
        return time.time() - t0

    return spin(1), spin(2)


def fork_server_ready(t0: float) -> float:
    """Seconds from `t0` until the runner's fork server has done its imports (a process
    started through it returns only then)."""
    import multiprocessing

    process = multiprocessing.get_context("forkserver").Process(target=time.sleep, args=(0,))
    process.start()
    process.join()
    return time.time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=1000,
        help="batches per namespace (100 is shorter than a worker's 2-3 s start-up)",
    )
    parser.add_argument("--quick", action="store_true", help="10 steps: checks that it works")
    parser.add_argument("--dask", action="store_true", help="also run DaskRunner")
    parser.add_argument(
        "--spawn",
        action="store_true",
        help="DeviceSlotRunner spawns its workers (as for GPU slots) instead of forking",
    )
    args = parser.parse_args()
    if args.quick:
        args.steps = 10
    logging.basicConfig(level=logging.WARNING)

    from kedro.runner import SequentialRunner

    from kedro_device_runner import DeviceSlotRunner
    from kedro_device_runner.slots import cpu_cores

    default_threads = torch.get_num_threads()
    load_before = os.getloadavg()
    one, two = parallel_capacity()
    threads = max(1, cpu_cores() // len(NAMESPACES))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        pipe, catalog = build(workdir, args.steps)
        quiet = {"log_dir": workdir / "logs", "live": "off", "memory": "off"}
        t0 = time.time()
        runner = DeviceSlotRunner(
            slots="cpu,cpu", start_method="spawn" if args.spawn else "auto", **quiet
        )
        fork_server_s = None if args.spawn else fork_server_ready(t0)
        logging.getLogger("kedro_device_runner").setLevel(logging.WARNING)
        logging.getLogger("kedro").setLevel(logging.WARNING)

        seq_wall, seq = timed_run(SequentialRunner(), pipe, catalog(), workdir)
        dev_wall, dev = timed_run(runner, pipe, catalog(), workdir)
        torch.set_num_threads(threads)
        seq1_wall, seq1 = timed_run(SequentialRunner(), pipe, catalog(), workdir)
        torch.set_num_threads(default_threads)
        dask_runner = dask_wall = dask = None
        if args.dask:
            from distributed import LocalCluster

            from kedro_device_runner import DaskRunner

            logging.getLogger("distributed").setLevel(logging.ERROR)
            with LocalCluster(
                host="127.0.0.1",
                processes=True,
                n_workers=len(NAMESPACES),
                threads_per_worker=1,
                dashboard_address=":0",
                preload=["kedro_device_runner.dask_preload"],
            ) as cluster:
                dask_runner = DaskRunner(
                    address=cluster.scheduler_address, threads_per_group=threads, **quiet
                )
                dask_wall, dask = timed_run(dask_runner, pipe, catalog(), workdir)
    load_after = os.getloadavg()

    slots = ", ".join(f"{s.name} ({s.threads} thread(s))" for s in runner.slots)
    print(
        f"cores: {cpu_cores()}  namespaces: {len(NAMESPACES)}  "
        f"steps/namespace: {args.steps} in {STAGES} nodes  "
        f"load avg before/after: {load_before[0]:.1f}/{load_after[0]:.1f}"
    )
    print(
        f"machine check: one CPU-bound process {one:.2f} s, two at once {two:.2f} s "
        f"(parallel capacity {2 * one / two:.2f}x of 2x)"
    )
    print(f"SequentialRunner wall ({default_threads} torch threads): {seq_wall:.2f} s")
    print(f"SequentialRunner wall ({seq1[NAMESPACES[0]][2][0]} torch thread(s)): {seq1_wall:.2f} s")
    print(f"DeviceSlotRunner wall (slots {slots}): {dev_wall:.2f} s")
    print(
        f"ratio DeviceSlotRunner/SequentialRunner: {dev_wall / seq_wall:.2f} "
        f"(vs same-threads SequentialRunner: {dev_wall / seq1_wall:.2f}; target <= 0.65)"
    )
    if fork_server_s is not None:
        print(
            f"fork server start-up (once per run, before the clock; in `kedro run` it overlaps "
            f"loading the project): {fork_server_s:.2f} s; with it on the clock the ratio "
            f"would be {(dev_wall + fork_server_s) / seq_wall:.2f}"
        )
    if dask_runner is not None:
        print(
            f"DaskRunner wall (LocalCluster, {len(dask_runner.workers)} workers, "
            f"{threads} torch thread(s) per group): {dask_wall:.2f} s"
        )
        print(
            f"ratio DaskRunner/SequentialRunner: {dask_wall / seq_wall:.2f} "
            f"(vs same-threads SequentialRunner: {dask_wall / seq1_wall:.2f}; target <= 0.65)"
        )
    # Where DeviceSlotRunner's time goes, against a perfect split of the 1-thread work.
    startup = [r.ready - r.launched for r in runner.results if r.kind == "namespace"]
    alone = sum(r[4] for r in seq1.values())  # seconds inside the nodes
    together = sum(r[4] for r in dev.values())
    method = runner.start_method(runner.slots[0])
    what = (
        "spawn, import torch and the project"
        if method == "spawn"
        else "fork from the server, load the group"
    )
    print(
        f"DeviceSlotRunner time budget: worker start-up ({what}) "
        f"{sum(startup) / len(startup):.2f} s; node time {together:.2f} s with both namespaces "
        f"at once vs {alone:.2f} s one at a time ({100 * (together / alone - 1):+.0f}%: the two "
        "share caches, memory bandwidth and, on a VM, maybe the host's cores)"
    )
    print(
        f"ceiling: half the 1-thread sequential wall over the {default_threads}-thread one = "
        f"{seq1_wall / 2 / seq_wall:.2f} (the ratio with no start-up and no sharing cost)"
    )
    print("timeline (seconds from run start; first node start -> last node end, torch threads):")
    runs = [("SequentialRunner", seq), ("DeviceSlotRunner", dev), ("SequentialRunner/1t", seq1)]
    if dask is not None:
        runs.append(("DaskRunner", dask))
    for name, timeline in runs:
        for ns, (start, end, n_threads, _pid, _busy) in timeline.items():
            print(
                f"  {name:19s} {ns:8s} nodes  {start:6.2f} -> {end:6.2f}  "
                f"(torch threads per node: {', '.join(map(str, n_threads))})"
            )
    # The runners' own per-namespace timeline (logs/<run_id>/timeline.json): start and
    # end on each slot or worker, from the runner's clock.
    for r in runner.results:
        if r.kind == "namespace":
            print(
                f"  DeviceSlotRunner    {r.name:8s} worker {r.launched:6.2f} -> {r.finished:6.2f}"
                f"  on {r.slot} (launched {r.launched:.2f}, ready {r.ready:.2f}, "
                f"upstream done {r.started:.2f})"
            )
    for r in dask_runner.results if dask_runner is not None else []:
        if r.kind == "namespace":
            print(
                f"  DaskRunner          {r.name:8s} task   {r.started:6.2f} -> {r.finished:6.2f}"
                f"  on {r.slot} (submitted {r.launched:.2f})"
            )


if __name__ == "__main__":
    main()
