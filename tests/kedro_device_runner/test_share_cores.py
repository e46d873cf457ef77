"""DeviceSlotRunner hands the cores of a finished CPU slot to the namespace still running."""

from __future__ import annotations

import pickle

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node, pipeline
from kedro_datasets.pickle import PickleDataset

from kedro_device_runner import DeviceSlotRunner
from tests.kedro_device_runner import toy_nodes as t

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore:One or more dataset names contain"),
]


def _run(tmp_path, share_cores: bool) -> dict:
    data = tmp_path / f"share-{share_cores}"
    fast_out, slow_started = data / "fast.first.pkl", data / "slow-started"
    per_ns = Pipeline(
        [
            node(
                t.torch_threads,
                ["base", "params:wait_for", "params:then_s", "params:mark"],
                "first",
                name="first",
            ),
            node(t.torch_threads, "first", "second", name="second"),
        ]
    )
    pipe = Pipeline([node(t.make_base, "params:n", "base", name="make_base")])
    for ns in ("fast", "slow"):
        pipe += pipeline(
            per_ns,
            namespace=ns,
            inputs={"base"},
            parameters={
                p: f"{p}_{ns}" for p in ("params:wait_for", "params:then_s", "params:mark")
            },
        )
    names = ["base"] + [f"{ns}.{d}" for ns in ("fast", "slow") for d in ("first", "second")]
    catalog = DataCatalog(
        datasets={n: PickleDataset(filepath=str(data / f"{n}.pkl")) for n in names}
        | {
            # `fast` starts once `slow`'s first node has (and read its threads); `slow`'s first
            # node then waits for `fast` to have finished (its first output, then a few seconds
            # for fast's second node and its worker's exit).
            "params:n": MemoryDataset(1),
            "params:then_s_fast": MemoryDataset(0.0),
            "params:then_s_slow": MemoryDataset(3.0),
            "params:wait_for_fast": MemoryDataset(str(slow_started)),
            "params:wait_for_slow": MemoryDataset(str(fast_out)),
            "params:mark_fast": MemoryDataset(""),
            "params:mark_slow": MemoryDataset(str(slow_started)),
        }
    )
    DeviceSlotRunner(
        slots="cpu;cpu",
        threads_per_slot=1,
        share_cores=share_cores,
        live="off",
        memory="off",
        log_dir=tmp_path / f"logs-{share_cores}",
    ).run(pipe, catalog)
    return {n: pickle.loads((data / f"{n}.pkl").read_bytes()) for n in names[1:]}


def test_threads_of_a_finished_slot_go_to_the_running_namespace(tmp_path):
    # This process runs a two-thread torch op first, as shared nodes may: a worker forked
    # from here would then hang at its first two-thread op (GNU OpenMP's pool does not
    # survive fork); the fork server's children do not.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    assert float((torch.ones(512, 512) * 2).sum()) == 2 * 512 * 512
    torch.set_num_threads(before)
    shared = _run(tmp_path, share_cores=True)
    assert shared["fast.first"] == shared["fast.second"] == {"start": 1, "end": 1}
    # slow's first node started on its one thread while fast ran, and got fast's core
    # while it still ran (fast finished during its wait): a signal, not the next node.
    assert shared["slow.first"] == {"start": 1, "end": 2}
    assert shared["slow.second"]["start"] == 2


def test_sharing_can_be_switched_off(tmp_path):
    alone = _run(tmp_path, share_cores=False)
    assert alone["slow.first"] == {"start": 1, "end": 1}
    assert alone["slow.second"] == {"start": 1, "end": 1}
