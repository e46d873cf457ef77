"""The resource ledger: real Kedro runs (SequentialRunner, DeviceSlotRunner workers) with
the project's ResourceLedgerHook, a tiny random model, real files; and the report section."""

from __future__ import annotations

import json

import pytest
import torch
from kedro.framework.hooks.manager import _create_hook_manager, _register_hooks
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node, pipeline
from kedro.runner import SequentialRunner
from kedro_datasets.pickle import PickleDataset

from sae_reasoning import ledger
from sae_reasoning.datasets.ledger import ResourceLedgerDataset
from sae_reasoning.datasets.model import ModelDataset
from sae_reasoning.hooks import ResourceLedgerHook
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.models.cached_forward import forward
from sae_reasoning.reporting.resources_section import section, summarise
from tests.ledger_project import nodes as n
from tests.tiny import save_tiny_model

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:One or more dataset names contain"),
]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("ledger_model") / "llama")


def test_tokens_are_the_non_padding_tokens_forwarded(llama_dir, one_torch_thread):
    lm = ModelHandle(ModelSpec("tiny", str(llama_dir), converted_cache=None)).load("cpu")
    ids = torch.randint(1, 300, (3, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    before = ledger.tokens().get("model", 0)
    _, context = forward(lm.model, ids, mask, keep=True)
    assert ledger.tokens()["model"] - before == 11
    # A pass on the cache: its mask covers cache + new tokens; only the new ones count.
    new_mask = torch.tensor([[1, 1], [1, 0], [0, 0]])
    forward(lm.model, torch.randint(1, 300, (3, 2)), new_mask, context)
    assert ledger.tokens()["model"] - before == 11 + 3
    ledger.install_token_counter(lm.model)  # again: still counted once
    with torch.no_grad():
        lm.model(torch.randint(1, 300, (2, 4)))  # no mask: every position is a token
    assert ledger.tokens()["model"] - before == 11 + 3 + 8


def test_every_node_of_a_stage_pipeline_gets_that_stage():
    from sae_reasoning.pipeline_registry import PER_MODEL_STAGES, namespaced
    from sae_reasoning.pipelines import data_loading, reporting, validate

    pipes = {stage: namespaced(stage, "m") for stage in PER_MODEL_STAGES}
    pipes.update(
        data_loading=data_loading.create_pipeline(),
        reporting=reporting.create_pipeline(["m"]),
        validate=validate.create_pipeline(["m"]),
    )
    for stage, p in pipes.items():
        assert p.nodes and {ledger.stage_of(x) for x in p.nodes} == {stage}


def _run(tmp_path, pipe, catalog, run_id, folder):
    hooks = _create_hook_manager()
    _register_hooks(hooks, [ResourceLedgerHook(str(folder))])
    SequentialRunner().run(pipe, catalog, hooks, run_id=run_id)


def test_a_kedro_run_records_each_node_and_keeps_earlier_runs(
    tmp_path, llama_dir, one_torch_thread
):
    folder = tmp_path / "ledger"
    model = ModelDataset(
        name="tiny", pretrained_model_name_or_path=str(llama_dir), converted_cache=None
    )
    pipe = Pipeline(
        [
            pipeline(
                [node(n.forward_known_batch, "model", "count", name="forward")], namespace="m1"
            ),
            node(n.hold_memory, "params:mb", "array", name="hold"),
            node(n.consume, ["m1.count", "array"], "total", name="consume"),
        ]
    )

    def catalog():
        return DataCatalog(
            {
                "m1.model": model,
                "params:mb": MemoryDataset(64),
                "m1.count": PickleDataset(filepath=str(tmp_path / "count.pkl")),
                "total": MemoryDataset(),
            }
        )

    _run(tmp_path, pipe, catalog(), "run-a", folder)
    _run(tmp_path, pipe, catalog(), "run-b", folder)
    count = PickleDataset(filepath=str(tmp_path / "count.pkl")).load()

    records = ResourceLedgerDataset(path=str(folder)).load()
    assert sorted(records["run_id"].unique()) == ["run-a", "run-b"]  # earlier runs kept
    latest = {r["node"]: r for r in records[records["run_id"] == "run-b"].to_dict("records")}
    assert set(latest) == {"m1.forward", "hold", "consume"}
    fwd, hold, consume = latest["m1.forward"], latest["hold"], latest["consume"]
    assert fwd["namespace"] == "m1" and hold["namespace"] == ""
    assert all(
        r["status"] == "done"
        and r["device"] == "cpu"
        and r["wall_s"] > 0
        and r["peak_memory_bytes"] > 0
        for r in latest.values()
    )
    assert fwd["model_tokens"] == fwd["tokens"] == count > 0
    # hold's 64 MiB array is alive when its window closes (saved to memory).
    assert hold["peak_rss_bytes"] - hold["rss_at_start_bytes"] >= 60 * 2**20
    assert consume["tokens"] == count  # the counter, as the SAE trainer increments it
    assert fwd["device_hours"] == pytest.approx(fwd["wall_s"] / 3600)


def test_failed_nodes_are_recorded_as_failed(tmp_path):
    folder = tmp_path / "ledger"
    pipe = Pipeline([node(n.boom, "params:x", None, name="explode")])
    with pytest.raises(ValueError, match="boom"):
        _run(tmp_path, pipe, DataCatalog({"params:x": MemoryDataset(1)}), "run-f", folder)
    rec = json.loads((folder / "run-f" / "explode.json").read_text())
    assert rec["status"] == "failed" and "ValueError: boom" in rec["error"] and rec["wall_s"] > 0

    # A failing save gets no node hook: the record says "running" until the session's
    # on_pipeline_error closes it (as KedroSession calls it after the runner raised).
    class Broken(MemoryDataset):
        def save(self, data):
            raise OSError("disk full")

    hook = ResourceLedgerHook(str(folder))
    hooks = _create_hook_manager()
    _register_hooks(hooks, [hook])
    pipe = Pipeline([node(n.consume, ["params:x", "params:a"], "out", name="save_fails")])
    catalog = DataCatalog(
        {"params:x": MemoryDataset(1), "params:a": MemoryDataset([1]), "out": Broken()}
    )
    with pytest.raises(Exception, match="disk full"):
        SequentialRunner().run(pipe, catalog, hooks, run_id="run-s")
    path = folder / "run-s" / "save_fails.json"
    assert json.loads(path.read_text())["status"] == "running"
    hook.on_pipeline_error(OSError("disk full"), {"run_id": "run-s"})
    assert json.loads(path.read_text())["status"] == "failed"


def test_parallel_workers_all_leave_their_records(tmp_path, monkeypatch):
    from kedro_device_runner import DeviceSlotRunner

    folder = tmp_path / "ledger"
    monkeypatch.setenv("LEDGER_TEST_DIR", str(folder))
    from tests.ledger_project.settings import HOOKS

    per_ns = Pipeline(
        [
            node(n.hold_memory, "params:mb", "array", name="hold"),
            node(n.consume, ["params:n", "array"], "total", name="consume"),
        ]
    )
    pipe = sum(
        (pipeline(per_ns, namespace=ns, parameters={"params:mb", "params:n"}) for ns in ("a", "b")),
        Pipeline([]),
    ) + Pipeline([node(n.consume, ["params:n", "b.total"], "report", name="report")])
    catalog = DataCatalog(
        {
            "params:mb": MemoryDataset(8),
            "params:n": MemoryDataset(5),
            **{f"{ns}.total": PickleDataset(filepath=str(tmp_path / f"{ns}.pkl")) for ns in "ab"},
            "report": PickleDataset(filepath=str(tmp_path / "report.pkl")),
        }
    )
    hooks = _create_hook_manager()
    _register_hooks(hooks, HOOKS)
    runner = DeviceSlotRunner(
        slots="cpu;cpu", log_dir=tmp_path / "logs", live="off", package_name="tests.ledger_project"
    )
    runner.run(pipe, catalog, hooks, run_id="run-p")

    records = {r["node"]: r for r in ledger.read_records(folder)}
    assert set(records) == {"a.hold", "a.consume", "b.hold", "b.consume", "report"}
    assert all(r["status"] == "done" and r["peak_memory_bytes"] > 0 for r in records.values())
    assert len({records["a.hold"]["pid"], records["b.hold"]["pid"], records["report"]["pid"]}) == 3
    assert records["a.consume"]["tokens"] == records["b.consume"]["tokens"] == 5
    # The runner's timeline carries the tokens the hook published in the workers.
    timeline = json.loads((tmp_path / "logs" / "run-p" / "timeline.json").read_text())
    units = {u["name"]: u for u in timeline["units"]}
    assert units["a"]["node_resources"]["a.consume"]["tokens"] == 5
    assert units["b"]["resources"]["tokens"] == 5 and timeline["resources"]["tokens"] == 15


def test_the_report_section_renders_the_latest_record_of_each_node():
    def rec(run, node_, ns, stage, wall, tokens, peak, status="done", started="2026-01-01T00:00:0"):
        return dict(
            run_id=run,
            node=node_,
            namespace=ns,
            stage=stage,
            status=status,
            wall_s=wall,
            device="cpu",
            device_name="",
            peak_memory_bytes=peak,
            tokens=tokens,
            device_hours=wall / 3600,
            started_at=started + run[-1],
        )

    records = [
        rec("r1", "m.capture_activations", "m", "capture", 100.0, 1000, 2**30),
        rec("r2", "m.capture_activations", "m", "capture", 10.0, 500, 2**29),  # latest: wins
        rec("r2", "m.score_baseline", "m", "capture", 30.0, 1500, 3 * 2**29),
        rec("r2", "m.train_sae", "m", "sae_training", 20.0, 4000, 2**28, status="failed"),
        rec("r2", "load_examples", "", "data_loading", 2.0, 0, 2**27),
    ]
    summary = summarise(records)
    rows = {(s["namespace"], s["stage"]): s for s in summary["stages"]}
    cap = rows[("m", "capture")]
    assert (cap["wall_s"], cap["tokens"], cap["peak_memory_bytes"], cap["nodes"]) == (
        40.0,
        2000,
        3 * 2**29,
        2,
    )
    assert cap["tokens_per_s"] == 50 and cap["device_hours"] == pytest.approx(40 / 3600)
    assert [s["stage"] for s in summary["stages"]] == ["data_loading", "capture", "sae_training"]
    assert summary["runs"] == ["r2"] and summary["totals"]["tokens"] == 6000
    text = "\n".join(section(summary))
    assert "| m | capture | 40.0 s | cpu | 1.50 GiB | 2,000 | 50 | 0.0111 | 2 |" in text
    assert "m.train_sae (failed)" in text
    assert "| (shared) | data_loading |" in text
    assert "No resource ledger records" in "\n".join(section(summarise([])))
