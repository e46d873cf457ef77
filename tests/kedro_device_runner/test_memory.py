"""Memory-aware placement: real worker processes on CPU slots with configured sizes.

Each namespace's need comes from `memory_gb` in its block of the `models` parameter (as a
user sets it), or from the estimator the project configures.
"""

from __future__ import annotations

import pickle

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node, pipeline
from kedro_datasets.pickle import PickleDataset

from kedro_device_runner import DeviceSlotRunner, InsufficientMemoryError
from kedro_device_runner.memory import (
    GiB,
    MemoryNeed,
    best_fit,
    estimate_group_memory,
    load_estimator,
    parse_memory_gb,
)
from kedro_device_runner.slots import Slot
from tests.kedro_device_runner import toy_nodes as t

pytestmark = pytest.mark.timeout(120)


def memory_pipeline(namespaces: list[str]) -> Pipeline:
    up = Pipeline([node(t.make_base, "params:n", "base", name="make_base")])
    per_model = Pipeline(
        [node(t.scale_by_model, ["base", "params:model", "params:seconds"], "out", name="scale")]
    )
    return up + sum(
        (
            pipeline(
                per_model,
                namespace=ns,
                inputs={"base"},
                parameters={
                    "params:model": f"params:models.{ns}",
                    "params:seconds": "params:seconds",
                },
            )
            for ns in namespaces
        ),
        Pipeline([]),
    )


def memory_catalog(tmp_path, needs_gb: dict[str, float], seconds: float = 0.4) -> DataCatalog:
    datasets = {
        name: PickleDataset(filepath=str(tmp_path / "data" / f"{name}.pkl"))
        for name in ["base", *(f"{ns}.out" for ns in needs_gb)]
    }
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
    runner = DeviceSlotRunner(
        slots="cpu;cpu", memory_gb="1;4", log_dir=tmp_path / "logs", live="log", live_interval_s=0
    )
    runner.run(memory_pipeline(list(needs)), memory_catalog(tmp_path, needs), run_id="mem1")

    res = {r.name: r for r in runner.results}
    assert {ns: res[ns].slot for ns in needs} == {
        "big_a": "cpu:1",
        "big_b": "cpu:1",
        "small": "cpu:0",
    }
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
    from kedro_device_runner.memory import cpu_available_memory, with_memory

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
    assert best_fit(MemoryNeed("m", 1 * GiB, "m", ""), [big, small]) is small
    assert best_fit(MemoryNeed("m", 4 * GiB, "m", ""), [big, small]) is big
    assert best_fit(MemoryNeed("m", 9 * GiB, "m", ""), [big, small]) is None
    assert best_fit(None, [big, small]) is small


def test_a_configured_estimator_is_asked_when_no_memory_gb_is_set(tmp_path):
    # By import path (as `--runner-params=memory_estimator=...` or the project setting
    # DEVICE_RUNNER_MEMORY_ESTIMATOR give it), or as a callable.
    assert load_estimator("tests.kedro_device_runner.test_memory:fixed_need") is fixed_need
    assert load_estimator(fixed_need) is fixed_need and load_estimator(None) is None
    with pytest.raises(ValueError, match="package.module:function"):
        load_estimator("no_colon")
    catalog = memory_catalog(tmp_path, {"m1": 3})
    inputs = {"params:models.m1", "m1.model"}
    assert estimate_group_memory("m1", inputs, catalog, fixed_need).bytes == 3 * GiB
    assert estimate_group_memory("m2", {"m2.model"}, catalog, fixed_need).how == "fixed"
    assert estimate_group_memory("m2", {"m2.model"}, catalog) is None


def fixed_need(namespace, inputs, catalog):
    return MemoryNeed(namespace, 5 * GiB, namespace, "fixed")
