"""DeviceSlotRunner on small real pipelines: real worker processes (forked from the fork
server, as CPU slots start them, and spawned, as GPU slots do), real files, no mocks.

The pipeline mirrors the project's shape: a shared node before (`make_base`), one
namespaced copy of a small "model" pipeline per namespace, shared nodes after (`combine`
needs every namespace, `summarise_first` only the first).
"""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node, pipeline
from kedro_datasets.pickle import PickleDataset

from kedro_device_runner import CrossProcessDatasetError, DeviceSlotRunError, DeviceSlotRunner
from kedro_device_runner.slots import Slot, cpu_cores
from tests.kedro_device_runner import toy_nodes as t

pytestmark = [
    pytest.mark.timeout(120),
    # Shared nodes read namespaced datasets ("m1.out"), as the project's reporting does.
    pytest.mark.filterwarnings("ignore:One or more dataset names contain"),
]


def model_pipeline(with_info: bool = False) -> Pipeline:
    nodes = [
        node(t.scale, ["base", "params:factor", "params:seconds"], "mid", name="scale"),
        node(t.finish, "mid", "out", name="finish"),
    ]
    if with_info:
        nodes.append(node(t.slot_info, "base", "info", name="slot_info"))
    return Pipeline(nodes)


def build_pipeline(namespaces: list[str], with_info: bool = False) -> Pipeline:
    up = Pipeline([node(t.make_base, "params:n", "base", name="make_base")])
    per_model = sum(
        (
            pipeline(
                model_pipeline(with_info),
                namespace=ns,
                inputs={"base"},
                parameters={
                    "params:factor": f"params:factor_{ns}",
                    "params:seconds": "params:seconds",
                },
            )
            for ns in namespaces
        ),
        Pipeline([]),
    )
    down = Pipeline(
        [
            node(t.combine, [f"{ns}.out" for ns in namespaces], "combined", name="combine"),
            node(t.summarise_one, f"{namespaces[0]}.out", "first_summary", name="summarise_first"),
        ]
    )
    return up + per_model + down


def build_catalog(tmp_path, factors: dict[str, float], seconds: float = 0.2, in_memory=()):
    persisted = ["base", "combined", "first_summary"]
    persisted += [f"{ns}.{ds}" for ns in factors for ds in ("out", "info")]
    datasets = {
        name: PickleDataset(filepath=str(tmp_path / "data" / f"{name}.pkl"))
        for name in persisted
        if name not in in_memory
    }
    datasets["params:n"] = MemoryDataset(3)
    datasets["params:seconds"] = MemoryDataset(seconds)
    datasets.update({f"params:factor_{ns}": MemoryDataset(f) for ns, f in factors.items()})
    return DataCatalog(datasets=datasets)


def load(tmp_path, name):
    with open(tmp_path / "data" / f"{name}.pkl", "rb") as f:
        return pickle.load(f)


S3_NAMES = ("base", "m1.out", "m2.out", "combined")


def s3_catalog(tmp_path, ds_args):
    """build_catalog's, with the datasets that cross processes at s3:// URLs."""
    from tests.s3_server import BUCKET

    catalog = build_catalog(tmp_path, {"m1": 2, "m2": 10})
    for name in S3_NAMES:
        catalog[name] = PickleDataset(filepath=f"s3://{BUCKET}/runner/{name}.pkl", **ds_args)
    return catalog


def check_s3_outputs(tmp_path, client):
    """What the bucket holds after build_pipeline(["m1", "m2"]) ran on s3_catalog."""
    from tests.s3_server import BUCKET

    def in_bucket(name):
        return pickle.loads(
            client.get_object(Bucket=BUCKET, Key=f"runner/{name}.pkl")["Body"].read()
        )

    m1, m2, combined = in_bucket("m1.out"), in_bucket("m2.out"), in_bucket("combined")
    assert (m1["value"], m2["value"], combined["value"]) == (7, 31, 38)
    assert len({m1["pid"], m2["pid"], os.getpid()}) == 3  # written by the workers
    assert combined["pid"] == os.getpid()  # read back here
    assert not any((tmp_path / "data").glob("m*.out.pkl"))  # nothing went to local paths
    for name in S3_NAMES:  # the next run starts from an empty bucket prefix
        client.delete_object(Bucket=BUCKET, Key=f"runner/{name}.pkl")


@pytest.mark.parametrize("start_method", ["auto", "spawn"])
def test_workers_and_this_process_share_data_through_s3(tmp_path, s3, ds_args, start_method):
    # A kedro-datasets entry at an s3:// URL holds an s3fs filesystem, which plain pickle
    # refuses: the groups go to the workers with cloudpickle.
    runner = DeviceSlotRunner(slots="cpu,cpu", log_dir=tmp_path / "logs", start_method=start_method)
    runner.run(build_pipeline(["m1", "m2"]), s3_catalog(tmp_path, ds_args), run_id="run-s3")
    check_s3_outputs(tmp_path, s3[1])


@pytest.mark.parametrize("start_method", ["auto", "spawn"])
def test_namespaces_run_in_parallel_on_their_slots_between_shared_nodes(
    tmp_path, caplog, start_method
):
    catalog = build_catalog(tmp_path, {"m1": 2, "m2": 10}, seconds=0.5)
    # share_cores off: m1 may finish before m2's last node, whose threads would then grow.
    runner = DeviceSlotRunner(
        slots="cpu,cpu",
        log_dir=tmp_path / "logs",
        live="log",
        live_interval_s=0,
        share_cores=False,
        start_method=start_method,
    )
    cpu, gpu = Slot("cpu:0", "cpu", "", 1), Slot("cuda:0", "cuda", "0", 1)
    assert [runner.start_method(s) for s in (cpu, gpu)] == (
        ["forkserver", "spawn"] if start_method == "auto" else ["spawn", "spawn"]
    )
    with caplog.at_level(logging.INFO):
        runner.run(build_pipeline(["m1", "m2"], with_info=True), catalog, run_id="run1")

    base, m1, m2 = load(tmp_path, "base"), load(tmp_path, "m1.out"), load(tmp_path, "m2.out")
    combined, first = load(tmp_path, "combined"), load(tmp_path, "first_summary")
    assert (m1["value"], m2["value"], combined["value"], first["value"]) == (7, 31, 38, 7)

    # Shared nodes ran here; each namespace in its own process, both nodes of it together.
    assert base["pid"] == combined["pid"] == first["pid"] == os.getpid()
    assert len({m1["pid"], m2["pid"], os.getpid()}) == 3
    assert m1["mid_pid"] == m1["pid"] and m2["mid_pid"] == m2["pid"]
    # DAG order at group granularity, and the two namespaces overlapped in time.
    assert base["end"] <= min(m1["mid_start"], m2["mid_start"])
    assert combined["start"] >= max(m1["end"], m2["end"])
    assert m1["mid_start"] < m2["end"] and m2["mid_start"] < m1["end"]

    # Each worker saw its own slot: no GPUs, its share of the cores.
    infos = [load(tmp_path, "m1.info"), load(tmp_path, "m2.info")]
    assert sorted(i["slot"] for i in infos) == ["cpu:0", "cpu:1"]
    for info in infos:
        assert info["cuda_visible_devices"] == ""
        assert info["device"] == "cpu"
        assert info["torch_threads"] == int(info["omp_num_threads"]) == max(1, cpu_cores() // 2)

    # One log per namespace, holding what the worker logged.
    assert (
        f"worker starting ({'forkserver' if start_method == 'auto' else 'spawn'}) on slot"
        in caplog.text
    )
    m1_log = (tmp_path / "logs" / "run1" / "m1.log").read_text()
    assert "scaling 3 by 2" in m1_log and "Completed node: m1.finish" in m1_log
    assert "scaling 3 by 10" in (tmp_path / "logs" / "run1" / "m2.log").read_text()
    # And one for the run: this process's records (shared nodes, live lines, summary).
    run_log = (tmp_path / "logs" / "run1" / "run.log").read_text()
    assert "Completed node: make_base" in run_log and "Completed node: combine" in run_log
    assert "m1 done on cpu:" in run_log and "DeviceSlotRunner summary" in run_log
    assert "scaling 3 by 2" not in run_log  # the namespaces' records stay in their logs
    assert {r.name: r.status for r in runner.results if r.kind == "namespace"} == {
        "m1": "done",
        "m2": "done",
    }

    # The live view (log lines when not on a terminal) and the timeline left behind.
    live = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("DeviceSlotRunner run1: ")
    ]
    assert any("m1 running on cpu:" in line and "m2 running on cpu:" in line for line in live)
    assert "m1 done on cpu:" in live[-1] and "(3/3 nodes" in live[-1]
    timeline = json.loads((tmp_path / "logs" / "run1" / "timeline.json").read_text())
    assert timeline["runner"] == "DeviceSlotRunner" and timeline["run_id"] == "run1"
    assert [s["name"] for s in timeline["slots"]] == ["cpu:0", "cpu:1"]
    units = {u["name"]: u for u in timeline["units"]}
    assert {units["m1"]["slot"], units["m2"]["slot"]} == {"cpu:0", "cpu:1"}
    assert units["make_base"]["slot"] == "main process"
    assert units["make_base"]["finished"] <= units["m1"]["started"] < units["m1"]["finished"]
    assert units["m1"]["started"] < units["m2"]["finished"]  # overlapped
    assert units["combine"]["started"] >= max(units["m1"]["finished"], units["m2"]["finished"])


def test_a_failing_namespace_spares_the_others_and_is_reported(tmp_path, caplog):
    catalog = build_catalog(tmp_path, {"m1": 2, "m2": -1})
    runner = DeviceSlotRunner(
        slots="cpu;cpu",
        log_dir=tmp_path / "logs",
        package_name="tests.kedro_device_runner.toy_project",
    )
    with caplog.at_level(logging.INFO), pytest.raises(DeviceSlotRunError) as err:
        runner.run(build_pipeline(["m1", "m2"]), catalog, run_id="run2")

    message = str(err.value)
    assert "1 namespace(s) failed: m2" in message
    assert "ValueError: boom: negative factor -1" in message and "m2.scale" in message
    # m1 finished, and so did the shared node that needs only m1; `combine` was skipped.
    assert load(tmp_path, "m1.out")["value"] == 7
    assert load(tmp_path, "first_summary")["value"] == 7
    assert not (tmp_path / "data" / "combined.pkl").exists()
    status = {r.name: r.status for r in runner.results}
    assert status == {
        "make_base": "done",
        "m1": "done",
        "m2": "failed",
        "combine": "skipped",
        "summarise_first": "done",
    }

    summary = next(m for r in caplog.records if "DeviceSlotRunner summary" in (m := r.getMessage()))
    m2_row = next(line for line in summary.splitlines() if line.startswith("m2 "))
    assert "cpu:" in m2_row and "failed" in m2_row and "boom" in m2_row
    assert any("Namespace m2 FAILED on slot" in r.getMessage() for r in caplog.records)
    assert any("Namespace m1 started on slot cpu:" in r.getMessage() for r in caplog.records)

    # The project's hooks (settings.HOOKS of the package) fired inside the workers.
    m1_log = (tmp_path / "logs" / "run2" / "m1.log").read_text()
    m2_log = (tmp_path / "logs" / "run2" / "m2.log").read_text()
    assert "HOOK before_node_run m1.scale" in m1_log and "HOOK after_node_run m1.finish" in m1_log
    assert f"pid={os.getpid()}" not in m1_log
    assert "HOOK on_node_error m2.scale ValueError" in m2_log
    assert "ValueError: boom: negative factor -1" in m2_log  # the traceback
    timeline = json.loads((tmp_path / "logs" / "run2" / "timeline.json").read_text())
    m2 = next(u for u in timeline["units"] if u["name"] == "m2")
    assert m2["status"] == "failed" and m2["failed_node"] == "m2.scale" and "boom" in m2["error"]


@pytest.mark.parametrize(
    ("in_memory", "expected"),
    [
        (
            ["m1.out"],
            "'m1.out' (MemoryDataset): saved by m1.finish in namespace 'm1', loaded by combine",
        ),
        (
            ["base"],
            "'base' (MemoryDataset): saved by make_base in the main process (shared node), "
            "loaded by m1.scale",
        ),
    ],
)
def test_memory_datasets_between_processes_are_refused_before_anything_runs(
    tmp_path, in_memory, expected
):
    catalog = build_catalog(tmp_path, {"m1": 2, "m2": 3}, in_memory=in_memory)
    runner = DeviceSlotRunner(slots="cpu,cpu", log_dir=tmp_path / "logs")
    with pytest.raises(CrossProcessDatasetError) as err:
        runner.run(build_pipeline(["m1", "m2"]), catalog, run_id="run3")
    assert expected in str(err.value)
    assert not (tmp_path / "data").exists() and not (tmp_path / "logs").exists()


def test_only_missing_outputs_runs_a_filtered_pipeline(tmp_path):
    # m1 and the shared input exist already: only m2 and what follows it must run.
    catalog = build_catalog(tmp_path, {"m1": 2, "m2": 10})
    catalog.save("base", {"value": 5, "pid": 0, "start": 0.0, "end": 0.0})
    catalog.save("m1.out", {"value": 100, "pid": 0, "start": 0.0, "end": 0.0})
    runner = DeviceSlotRunner(log_dir=tmp_path / "logs")  # auto: one CPU slot per group
    runner.run(build_pipeline(["m1", "m2"]), catalog, run_id="run4", only_missing_outputs=True)

    assert {r.name for r in runner.results} == {"m2", "combine", "summarise_first"}
    assert len(runner.slots) == 1
    assert load(tmp_path, "m2.out")["value"] == 51
    assert load(tmp_path, "combined")["value"] == 151
    assert load(tmp_path, "base")["pid"] == 0  # not re-run


def test_a_worker_that_dies_without_reporting_is_a_failed_namespace(tmp_path):
    pipe = Pipeline([node(t.make_base, "params:n", "base", name="make_base")]) + pipeline(
        Pipeline([node(t.die, "base", "out", name="die")]), namespace="m1", inputs={"base"}
    )
    runner = DeviceSlotRunner(slots="cpu", log_dir=tmp_path / "logs")
    with pytest.raises(DeviceSlotRunError, match=r"m1 \(worker process exited with code 3"):
        runner.run(pipe, build_catalog(tmp_path, {"m1": 1}), run_id="run5")


def test_a_failing_shared_node_skips_the_namespaces_after_it(tmp_path):
    # Both workers are started while make_base runs (prestart); they are told to stop.
    pipe = build_pipeline(["m1", "m2"])
    pipe = Pipeline([node(t.broken_base, "params:n", "base", name="make_base")]) + Pipeline(
        [n for n in pipe.nodes if n.name != "make_base"]
    )
    runner = DeviceSlotRunner(slots="cpu,cpu", log_dir=tmp_path / "logs")
    with pytest.raises(DeviceSlotRunError, match="shared node.*make_base.*no data today"):
        runner.run(pipe, build_catalog(tmp_path, {"m1": 2, "m2": 3}), run_id="run6")
    status = {r.name: r.status for r in runner.results}
    assert status["make_base"] == "failed"
    assert {status[k] for k in ("m1", "m2", "combine", "summarise_first")} == {"skipped"}


def test_a_shared_node_between_two_nodes_of_a_namespace_is_refused(tmp_path):
    with pytest.warns(UserWarning, match="interrupted"):  # Kedro notices it too
        pipe = Pipeline(
            [
                node(t.make_base, "params:n", "m1.a", name="first", namespace="m1"),
                node(t.summarise_one, "m1.a", "b", name="between"),
                node(t.summarise_one, "b", "m1.c", name="last", namespace="m1"),
            ]
        )
    with pytest.raises(ValueError, match="cycle"):
        DeviceSlotRunner(log_dir=tmp_path / "logs").run(pipe, build_catalog(tmp_path, {}))


def test_a_log_dir_that_cannot_be_created_is_refused_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    runner = DeviceSlotRunner(slots="cpu", log_dir=tmp_path / "a_file" / "logs")
    with pytest.raises(
        ValueError,
        match=r"log_dir .*a_file/logs/run5 cannot be created: "
        r".*a_file is not a writable folder",
    ):
        runner.run(build_pipeline(["m1"]), build_catalog(tmp_path, {"m1": 2}), run_id="run5")
    assert not (tmp_path / "data").exists()  # not even the shared node ran


def test_a_run_log_that_cannot_be_written_does_not_stop_the_run(tmp_path, caplog):
    from kedro_device_runner.run_log import run_log

    log = logging.getLogger("tests.run_log")
    (tmp_path / "a_file").write_text("not a folder")
    with caplog.at_level(logging.INFO), run_log(tmp_path / "a_file" / "run.log", log):
        log.warning("first")
        log.warning("second")
    assert "Could not write the run log" in caplog.text and "second" in caplog.text


def with_report(pipe: Pipeline, namespaces: list[str], named: bool = False) -> Pipeline:
    """`pipe` plus a shared node after every namespace that takes their outputs as
    keyword arguments (`<ns>__out`), through **kwargs unless `named`."""
    inputs = {"base": "base", **{f"{ns}__out": f"{ns}.out" for ns in namespaces}}
    func, name = (t.report_named, "report_named") if named else (t.report, "report")
    return pipe + Pipeline([node(func, inputs, name, name=name)])


def broken_model_catalog(tmp_path, factors: dict[str, float], broken: str):
    """build_catalog's, where namespace `broken` saves its output through a dataset whose
    save cannot load its model (Kedro wraps that error twice on the way out)."""
    catalog = build_catalog(tmp_path, factors)
    catalog[f"{broken}.out"] = t.BrokenModelOutput(broken, str(tmp_path / "no" / "such" / "model"))
    for name in ("report", "report_named"):
        catalog[name] = PickleDataset(filepath=str(tmp_path / "data" / f"{name}.pkl"))
    return catalog


def check_partial_run(tmp_path, runner, caplog, err, run_id: str, place: str):
    """After with_report(build_pipeline(["m1", "m2"])) on broken_model_catalog(..., "m2"):
    the summary and the error show the root cause; `report` ran on m1 alone."""
    name = type(runner).__name__
    cause = (
        f"ModelUnavailableError: model 'm2' ({tmp_path}/no/such/model) cannot be loaded: "
        f"[Errno 2] No such file or directory: '{tmp_path}/no/such/model/config.json'. "
        "It is not a local folder."
    )
    context = (
        " (raised as DatasetError: m2.out: Failed while saving data to dataset "
        "tests.kedro_device_runner"
    )
    message = str(err.value)
    assert f"{name}: 1 namespace(s) failed: m2. Failures: m2 ({cause}{context}" in message
    assert "Ran on what finished: report (without m2)" in message
    summary = next(m for r in caplog.records if f"{name} summary" in (m := r.getMessage()))
    rows = {line.split("  ")[0].strip(): line for line in summary.splitlines()}
    error_column = rows["m2"][summary.splitlines()[1].index("error") :]  # the header's line
    assert error_column.startswith(cause + context)
    assert "ran without failed m2" in rows["report (shared)"] and "done" in rows["report (shared)"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"Namespace m2 FAILED on {place}" in m and cause in m for m in messages)
    assert any(
        "Shared node report runs on what finished, without the outputs of failed unit: m2"
        in r.getMessage()
        for r in caplog.records
    )
    m2_log = (tmp_path / "logs" / run_id / "m2.log").read_text()
    assert f"Namespace failed in node m2.finish: {cause}" in m2_log
    # The shared node downstream of both ran on m1 alone; the positional one was skipped.
    assert (
        load(tmp_path, "report")["models"] == ["m1__out"] and load(tmp_path, "report")["value"] == 7
    )
    status = {r.name: r.status for r in runner.results}
    assert status == {
        "make_base": "done",
        "m1": "done",
        "m2": "failed",
        "combine": "skipped",
        "summarise_first": "done",
        "report": "done",
    }
    res = {r.name: r for r in runner.results}
    assert res["report"].left_out == ["m2"] and res["report"].dropped_inputs == ["m2.out"]
    timeline = json.loads((tmp_path / "logs" / run_id / "timeline.json").read_text())
    assert next(u for u in timeline["units"] if u["name"] == "report")["left_out"] == ["m2"]


def test_a_failed_namespace_shows_its_root_cause_and_the_report_runs_without_it(tmp_path, caplog):
    catalog = broken_model_catalog(tmp_path, {"m1": 2, "m2": 10}, broken="m2")
    runner = DeviceSlotRunner(slots="cpu;cpu", log_dir=tmp_path / "logs")
    with caplog.at_level(logging.INFO), pytest.raises(DeviceSlotRunError) as err:
        runner.run(with_report(build_pipeline(["m1", "m2"]), ["m1", "m2"]), catalog, run_id="r7")
    check_partial_run(tmp_path, runner, caplog, err, "r7", "slot cpu:")


def test_a_node_that_names_every_namespace_is_still_skipped(tmp_path):
    # Named parameters (no **kwargs to take what is left out): as before, skipped. With
    # every namespace failed, a **kwargs node has nothing left to work on: skipped too.
    pipe = with_report(build_pipeline(["m1", "m2"]), ["m1", "m2"], named=True)
    runner = DeviceSlotRunner(slots="cpu;cpu", log_dir=tmp_path / "logs")
    with pytest.raises(
        DeviceSlotRunError, match="Skipped .upstream failed.: combine, report_named"
    ):
        runner.run(pipe, broken_model_catalog(tmp_path, {"m1": 2, "m2": 10}, "m2"), run_id="r8")
    assert not (tmp_path / "data" / "report_named.pkl").exists()

    pipe = with_report(build_pipeline(["m1"]), ["m1"])
    with pytest.raises(
        DeviceSlotRunError, match="Skipped .upstream failed.: combine, report, summarise_first"
    ):
        runner.run(pipe, broken_model_catalog(tmp_path, {"m1": 2}, "m1"), run_id="r9")
    assert not (tmp_path / "data" / "report.pkl").exists()


def shared_only_pipeline() -> Pipeline:
    """Shared nodes reading namespaced datasets, and no namespaced node (as
    `--pipeline=reporting`)."""
    return Pipeline(
        [
            node(t.make_base, "params:n", "base", name="make_base"),
            node(t.combine, ["m1.out", "m2.out"], "combined", name="combine"),
        ]
    )


def seed_namespace_outputs(catalog) -> None:
    for ns, value in (("m1", 100), ("m2", 20)):
        catalog.save(f"{ns}.out", {"value": value, "pid": 0, "start": 0.0, "end": 0.0})


@pytest.mark.parametrize("only_missing", [False, True])
def test_a_pipeline_without_namespaces_runs_its_shared_nodes(tmp_path, only_missing):
    catalog = build_catalog(tmp_path, {"m1": 2, "m2": 10})
    seed_namespace_outputs(catalog)
    if only_missing:  # every namespace's output exists: only the shared node after is left
        catalog.save("base", {"value": 5, "pid": 0, "start": 0.0, "end": 0.0})
    pipe = build_pipeline(["m1", "m2"]) if only_missing else shared_only_pipeline()
    runner = DeviceSlotRunner(slots="cpu;cpu", log_dir=tmp_path / "logs")
    runner.run(pipe, catalog, run_id="r10", only_missing_outputs=only_missing)
    assert load(tmp_path, "combined")["value"] == 120
    assert load(tmp_path, "combined")["pid"] == os.getpid()
    assert {r.name for r in runner.results} == (
        {"combine", "summarise_first"} if only_missing else {"make_base", "combine"}
    )
    assert all(r.status == "done" for r in runner.results) and runner.slots == []
