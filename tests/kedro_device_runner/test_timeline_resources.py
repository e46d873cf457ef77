"""The timeline's per-node resources: a real DeviceSlotRunner run of a small pipeline, no
project hooks (the runner measures nodes itself; what a project publishes rides along)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node, pipeline
from kedro_datasets.pickle import PickleDataset

from kedro_device_runner import DeviceSlotRunError, DeviceSlotRunner
from kedro_device_runner.node_metrics import NodeMeter, publish, take, totals

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:One or more dataset names contain"),
]


def make(n: int) -> int:
    return n


def work(n: int, factor: float) -> np.ndarray:
    """Publishes n * 10 tokens; fails for a negative factor; returns ~32 MiB."""
    if factor < 0:
        raise ValueError("boom: negative factor")
    publish(tokens=n * 10)
    return np.ones(4 * 2**20) * factor


def shrink(big: np.ndarray) -> float:
    return float(big[0])


def collect(**outs) -> float:
    return sum(outs.values())


def build(namespaces):
    per_ns = Pipeline(
        [
            node(work, ["base", "params:factor"], "big", name="work"),
            node(shrink, "big", "small", name="shrink"),
        ]
    )
    return (
        Pipeline([node(make, "params:n", "base", name="make")])
        + sum(
            (
                pipeline(
                    per_ns,
                    namespace=ns,
                    inputs={"base"},
                    parameters={"params:factor": f"params:factor_{ns}"},
                )
                for ns in namespaces
            ),
            Pipeline([]),
        )
        + Pipeline(
            [node(collect, {ns: f"{ns}.small" for ns in namespaces}, "total", name="collect")]
        )
    )


def catalog(tmp_path, factors):
    datasets = {
        "params:n": MemoryDataset(3),
        **{f"params:factor_{ns}": MemoryDataset(f) for ns, f in factors.items()},
    }
    for name in ["base", "total", *(f"{ns}.small" for ns in factors)]:
        datasets[name] = PickleDataset(filepath=str(tmp_path / "data" / f"{name}.pkl"))
    return DataCatalog(datasets)


def test_the_timeline_carries_each_nodes_resources(tmp_path):
    runner = DeviceSlotRunner(
        slots="cpu;cpu",
        log_dir=tmp_path / "logs",
        live="off",
        package_name="tests.kedro_device_runner.toy_project",
    )
    with pytest.raises(DeviceSlotRunError, match="m2"):
        runner.run(build(["m1", "m2"]), catalog(tmp_path, {"m1": 2.0, "m2": -1.0}), run_id="res")

    timeline = json.loads((tmp_path / "logs" / "res" / "timeline.json").read_text())
    units = {u["name"]: u for u in timeline["units"]}
    m1 = units["m1"]["node_resources"]
    assert set(m1) == {"m1.work", "m1.shrink"}
    for figures in [*m1.values(), units["make"]["node_resources"]["make"]]:
        assert (
            figures["status"] == "done" and figures["device"] == "cpu" and figures["devices"] == 1
        )
        assert figures["wall_s"] > 0 and figures["peak_memory_bytes"] > 0
        assert figures["device_hours"] == pytest.approx(figures["wall_s"] / 3600)
    work_ = m1["m1.work"]
    assert work_["tokens"] == 30  # published by the node
    assert work_["peak_rss_bytes"] - work_["rss_at_start_bytes"] >= 30 * 2**20
    assert "tokens" not in m1["m1.shrink"]  # nothing published there
    # The failed node is there too, as failed; the shared node after ran without m2.
    assert units["m2"]["node_resources"]["m2.work"]["status"] == "failed"
    assert units["collect"]["node_resources"]["collect"]["status"] == "done"
    # Sums per unit and for the run.
    assert units["m1"]["resources"]["tokens"] == 30 and units["m1"]["resources"]["nodes"] == 2
    assert units["m1"]["resources"]["wall_s"] == pytest.approx(
        sum(f["wall_s"] for f in m1.values()), abs=1e-5
    )
    assert timeline["resources"]["nodes"] == 5 and timeline["resources"]["devices_used"] == ["cpu"]


def test_a_meter_records_failure_and_published_figures_are_taken_once():
    meter = NodeMeter()
    with pytest.raises(RuntimeError), meter:
        publish(tokens=4)
        raise RuntimeError("x")
    assert meter.figures()["status"] == "failed"
    assert take() == {"tokens": 4} and take() == {}
    assert totals(
        {
            "a": {"wall_s": 1.0, "tokens": 2, "peak_memory_bytes": 5, "device": "cpu"},
            "b": {"wall_s": 2.0, "peak_memory_bytes": 9, "device": "cuda:1"},
        }
    ) == {
        "nodes": 2,
        "wall_s": 3.0,
        "tokens": 2,
        "peak_memory_bytes": 9,
        "devices_used": ["cpu", "cuda:1"],
    }


def test_a_gpu_is_named_by_its_physical_index(monkeypatch):
    from kedro_device_runner.node_metrics import cuda_device_label

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # a slot's process sees cards 2 and 3
    assert (cuda_device_label(0), cuda_device_label(1)) == ("cuda:2", "cuda:3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert cuda_device_label(1) == "cuda:1"
