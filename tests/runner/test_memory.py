"""Memory-aware placement: real worker processes on CPU slots with configured sizes.

Each namespace's need comes from `memory_gb` in its block of the `models` parameter (as a
user sets it), or from the model's config (a tiny real model folder).
"""

from __future__ import annotations

import pickle

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node, pipeline
from kedro_datasets.pickle import PickleDataset

from sae_reasoning.datasets.model import ModelDataset
from sae_reasoning.runner import DeviceSlotRunner, InsufficientMemoryError
from sae_reasoning.runner.memory import GiB, best_fit, estimate_group_memory, parse_memory_gb
from sae_reasoning.runner.slots import Slot
from tests.runner import toy_nodes as t

pytestmark = pytest.mark.timeout(120)


def memory_pipeline(namespaces: list[str]) -> Pipeline:
    up = Pipeline([node(t.make_base, "params:n", "base", name="make_base")])
    per_model = Pipeline([
        node(t.scale_by_model, ["base", "params:model", "params:seconds"], "out", name="scale")
    ])
    return up + sum(
        (pipeline(per_model, namespace=ns, inputs={"base"},
                  parameters={"params:model": f"params:models.{ns}", "params:seconds": "params:seconds"})
         for ns in namespaces),
        Pipeline([]),
    )


def memory_catalog(tmp_path, needs_gb: dict[str, float], seconds: float = 0.4) -> DataCatalog:
    datasets = {name: PickleDataset(filepath=str(tmp_path / "data" / f"{name}.pkl"))
                for name in ["base", *(f"{ns}.out" for ns in needs_gb)]}
    datasets["params:n"] = MemoryDataset(3)
    datasets["params:seconds"] = MemoryDataset(seconds)
    for ns, need in needs_gb.items():
        datasets[f"params:models.{ns}"] = MemoryDataset({"factor": 2, "memory_gb": need})
    return DataCatalog(datasets=datasets)


def load(tmp_path, name):
    with open(tmp_path / "data" / f"{name}.pkl", "rb") as f:
        return pickle.load(f)


def test_groups_go_to_a_slot_where_they_fit_or_wait_for_one(tmp_path):
    # cpu:0 has 1 GiB, cpu:1 4 GiB. big_a and big_b fit only cpu:1: one waits for the other;
    # small takes cpu:0 meanwhile (the best fit leaves cpu:1 to the big ones).
    needs = {"big_a": 3, "big_b": 3, "small": 0.5}
    runner = DeviceSlotRunner(slots="cpu;cpu", memory_gb="1;4", log_dir=tmp_path / "logs",
                              live="log", live_interval_s=0)
    runner.run(memory_pipeline(list(needs)), memory_catalog(tmp_path, needs), run_id="mem1")

    res = {r.name: r for r in runner.results}
    assert {ns: res[ns].slot for ns in needs} == {"big_a": "cpu:1", "big_b": "cpu:1", "small": "cpu:0"}
    assert [s.memory_bytes for s in runner.slots] == [1 * GiB, 4 * GiB]
    a, b = load(tmp_path, "big_a.out"), load(tmp_path, "big_b.out")
    assert a["slot"] == b["slot"] == "cpu:1" and load(tmp_path, "small.out")["slot"] == "cpu:0"
    assert a["end"] <= b["start"] or b["end"] <= a["start"]  # never on cpu:1 together
    assert res["big_a"].memory_need_bytes == 3 * GiB and res["big_a"].memory == "3.0 GiB"


def test_a_group_that_fits_nowhere_fails_before_any_work(tmp_path):
    needs = {"m1": 0.5, "huge": 64}
    runner = DeviceSlotRunner(slots="cpu;cpu", memory_gb="1;4", log_dir=tmp_path / "logs")
    with pytest.raises(InsufficientMemoryError) as err:
        runner.run(memory_pipeline(list(needs)), memory_catalog(tmp_path, needs), run_id="mem2")
    message = str(err.value)
    assert "namespace 'huge'" in message and "needs ~64.0 GiB" in message
    assert "memory_gb in params:models.huge" in message
    assert "the largest slot, cpu:1, has 4.0 GiB" in message and "'m1'" not in message
    assert not (tmp_path / "data").exists()  # not even the shared node ran
    assert not (tmp_path / "logs").exists()

    # With the check off, the runner trusts the user.
    DeviceSlotRunner(slots="cpu", memory="off", log_dir=tmp_path / "logs").run(
        memory_pipeline(["huge"]), memory_catalog(tmp_path, {"huge": 64}, seconds=0), run_id="x"
    )
    assert load(tmp_path, "huge.out")["value"] == 6


def test_measured_cpu_slots_share_the_available_ram():
    from sae_reasoning.runner.memory import cpu_available_memory, with_memory

    slots = with_memory([Slot("cpu:0", "cpu", "", 1), Slot("cpu:1", "cpu", "", 1)], None)
    share = cpu_available_memory() / 2
    assert all(abs(s.memory_bytes - share) < 0.2 * share for s in slots)


def test_memory_gb_parsing_and_best_fit():
    assert parse_memory_gb("8;16", 2) == [8.0, 16.0]
    assert parse_memory_gb(4, 3) == [4.0] * 3
    assert parse_memory_gb("auto", 2) is None
    with pytest.raises(ValueError, match="3 values for 2 slot"):
        parse_memory_gb("1;2;3", 2)
    small, big = Slot("a", "cpu", "", 1, 2 * GiB), Slot("b", "cpu", "", 1, 8 * GiB)
    from sae_reasoning.runner.memory import MemoryNeed

    assert best_fit(MemoryNeed("m", 1 * GiB, "m", ""), [big, small]) is small
    assert best_fit(MemoryNeed("m", 4 * GiB, "m", ""), [big, small]) is big
    assert best_fit(MemoryNeed("m", 9 * GiB, "m", ""), [big, small]) is None
    assert best_fit(None, [big, small]) is small


def test_need_is_estimated_from_the_model_config(tmp_path):
    from tests.tiny import save_tiny_model

    folder = save_tiny_model("llama", tmp_path / "tiny_llama")
    catalog = DataCatalog(datasets={
        "tiny.model": ModelDataset(name="tiny", pretrained_model_name_or_path=str(folder)),
        "params:models.tiny": MemoryDataset({"layers": [1]}),
        "params:sae_training": MemoryDataset({"expansion_factor": 8, "batch_size": 4096}),
        "params:capture": MemoryDataset({"batch_size": 16}),
    })
    inputs = {"tiny.model", "params:models.tiny", "params:sae_training", "params:capture"}
    need = estimate_group_memory("tiny", inputs, catalog)
    assert need is not None and need.model.startswith("tiny (") and "float32" in need.model
    assert "weights" in need.how and "SAE" in need.how and need.bytes > 0
    # Without SAE training in the group, less is needed; memory_gb overrides the estimate.
    assert estimate_group_memory("tiny", inputs - {"params:sae_training"}, catalog).bytes < need.bytes
    catalog.save("params:models.tiny", {"layers": [1], "memory_gb": 12})
    assert estimate_group_memory("tiny", inputs, catalog).bytes == 12 * GiB
