"""DaskRunner against a real Dask cluster on loopback (separate worker processes), running
the same toy project as DeviceSlotRunner's tests: hooks, failure isolation, memory fit."""

from __future__ import annotations

import json
import logging
import os

import distributed
import pytest
from kedro.pipeline import Pipeline, node
from kedro_datasets.pickle import PickleDataset

from kedro_device_runner import DaskRunError, DaskRunner, InsufficientMemoryError
from tests.kedro_device_runner import toy_nodes as t
from tests.kedro_device_runner.test_device_slot_runner import (
    broken_model_catalog,
    build_catalog,
    build_pipeline,
    check_partial_run,
    check_s3_outputs,
    load,
    s3_catalog,
    seed_namespace_outputs,
    shared_only_pipeline,
    with_report,
)
from tests.kedro_device_runner.test_memory import memory_catalog, memory_pipeline

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:One or more dataset names contain"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        host="127.0.0.1",
        processes=True,
        n_workers=2,
        threads_per_worker=1,
        dashboard_address="127.0.0.1:0",
    ) as c:
        yield c


def test_namespaces_run_as_tasks_on_the_cluster_with_the_projects_hooks(tmp_path, cluster, caplog):
    catalog = build_catalog(tmp_path, {"m1": 2, "m2": 10}, seconds=1.0)
    runner = DaskRunner(
        address=cluster.scheduler_address,
        log_dir=tmp_path / "logs",
        package_name="tests.kedro_device_runner.toy_project",
        live="log",
        live_interval_s=0,
    )
    with caplog.at_level(logging.INFO):
        runner.run(build_pipeline(["m1", "m2"]), catalog, run_id="dask1")

    m1, m2, combined = (
        load(tmp_path, "m1.out"),
        load(tmp_path, "m2.out"),
        load(tmp_path, "combined"),
    )
    assert (m1["value"], m2["value"], combined["value"]) == (7, 31, 38)
    # Shared nodes here; each namespace on a worker process, both its nodes there.
    assert load(tmp_path, "base")["pid"] == combined["pid"] == os.getpid()
    assert len({m1["pid"], m2["pid"], os.getpid()}) == 3 and m1["mid_pid"] == m1["pid"]
    assert combined["start"] >= max(m1["end"], m2["end"])
    assert m1["mid_start"] < m2["end"] and m2["mid_start"] < m1["end"]  # in parallel
    workers = set(cluster.scheduler_info["workers"])
    res = {r.name: r for r in runner.results}
    assert {res["m1"].slot, res["m2"].slot} == workers
    assert not runner.use_gpu  # no worker declares a GPU resource

    # Logs: one per namespace with the hooks' lines, the live lines, the timeline.
    m1_log = (tmp_path / "logs" / "dask1" / "m1.log").read_text()
    assert "HOOK before_node_run m1.scale" in m1_log and "HOOK after_node_run m1.finish" in m1_log
    assert "scaling 3 by 2" in m1_log and "scaling 3 by 10" not in m1_log
    live = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("DaskRunner dask1:")
    ]
    assert any("m1 running on tcp://127.0.0.1" in line for line in live)
    assert "2 worker(s) warmed up (torch and the project imported)" in caplog.text
    timeline = json.loads((tmp_path / "logs" / "dask1" / "timeline.json").read_text())
    assert timeline["runner"] == "DaskRunner" and {p["name"] for p in timeline["slots"]} == workers
    units = {u["name"]: u for u in timeline["units"]}
    assert units["m1"]["status"] == "done" and units["m1"]["nodes_done"] == 2
    assert units["make_base"]["finished"] <= units["m1"]["started"] < units["m1"]["finished"]
    assert units["combine"]["started"] >= units["m2"]["finished"]


def test_a_failing_namespace_spares_the_others_on_the_cluster(tmp_path, cluster, caplog):
    catalog = build_catalog(tmp_path, {"m1": 2, "m2": -1})
    runner = DaskRunner(
        address=cluster.scheduler_address,
        log_dir=tmp_path / "logs",
        package_name="tests.kedro_device_runner.toy_project",
    )
    with caplog.at_level(logging.INFO), pytest.raises(DaskRunError) as err:
        runner.run(build_pipeline(["m1", "m2"]), catalog, run_id="dask2")
    message = str(err.value)
    assert "DaskRunner: 1 namespace(s) failed: m2" in message
    assert "ValueError: boom: negative factor -1" in message and "in node m2.scale" in message
    assert load(tmp_path, "m1.out")["value"] == 7 and load(tmp_path, "first_summary")["value"] == 7
    assert not (tmp_path / "data" / "combined.pkl").exists()
    assert {r.name: r.status for r in runner.results} == {
        "make_base": "done",
        "m1": "done",
        "m2": "failed",
        "combine": "skipped",
        "summarise_first": "done",
    }
    summary = next(m for r in caplog.records if "DaskRunner summary" in (m := r.getMessage()))
    assert "boom" in next(line for line in summary.splitlines() if line.startswith("m2 "))
    m2_log = (tmp_path / "logs" / "dask2" / "m2.log").read_text()
    assert "HOOK on_node_error m2.scale ValueError" in m2_log and "Traceback" in m2_log
    # The cluster is still usable: the failure was the group's, not the worker's.
    with distributed.Client(cluster.scheduler_address) as client:
        assert client.submit(sum, [1, 2]).result() == 3


def test_memory_and_gpu_requirements_are_checked_before_any_work(tmp_path, cluster):
    needs = {"m1": 0.5, "huge": 64}
    runner = DaskRunner(address=cluster.scheduler_address, log_dir=tmp_path / "logs", memory_gb=4)
    with pytest.raises(
        InsufficientMemoryError, match=r"namespace 'huge'.*needs ~64.0 GiB.*has 4.0 GiB"
    ):
        runner.run(memory_pipeline(list(needs)), memory_catalog(tmp_path, needs), run_id="d3")
    with pytest.raises(ValueError, match="no worker .* declares a GPU resource"):
        DaskRunner(address=cluster.scheduler_address, gpu="true", log_dir=tmp_path / "logs").run(
            memory_pipeline(["m1"]), memory_catalog(tmp_path, {"m1": 0.5}), run_id="d4"
        )
    assert not (tmp_path / "data").exists()
    # Measured: each worker's memory limit (the LocalCluster splits the RAM among them).
    DaskRunner(address=cluster.scheduler_address, log_dir=tmp_path / "logs").run(
        memory_pipeline(["m1"]), memory_catalog(tmp_path, {"m1": 0.5}, seconds=0), run_id="d5"
    )
    assert load(tmp_path, "m1.out")["value"] == 6


def test_without_an_address_a_local_cluster_on_loopback_is_started_and_closed(tmp_path):
    # A shared node after the namespace lists the sockets listening in this process (the
    # scheduler, its dashboard, the nanny) and its children (the worker) while the
    # cluster is up: every one the run opened is on 127.0.0.1, none on every interface
    # (0.0.0.0 or ::). Those listening before (other tests' servers) are not the run's.
    before = set(t.listening_sockets(None))
    catalog = build_catalog(tmp_path, {"m1": 2})
    catalog["sockets"] = PickleDataset(filepath=str(tmp_path / "data" / "sockets.pkl"))
    pipe = build_pipeline(["m1"]) + Pipeline(
        [node(t.listening_sockets, "m1.out", "sockets", name="list_sockets")]
    )
    runner = DaskRunner(n_workers=1, log_dir=tmp_path / "logs", live="rich")
    runner.run(pipe, catalog, run_id="dask6", only_missing_outputs=False)
    assert load(tmp_path, "combined")["value"] == 7
    assert runner.cluster.status.name == "closed" and len(runner.workers) == 1
    sockets = set(load(tmp_path, "sockets")) - before
    assert len({pid for pid, _, _ in sockets}) >= 2  # this process and the worker's
    assert len(sockets) >= 4  # scheduler, dashboard, nanny, worker
    assert {ip for _, ip, _ in sockets} == {"127.0.0.1"}, sockets
    assert runner.cluster.dashboard_link.startswith("http://127.0.0.1:")


def test_the_local_clusters_addresses_are_runner_parameters():
    from kedro.framework.cli.project import _split_params

    kwargs = _split_params(None, None, "host=0.0.0.0,dashboard_address=none")
    runner = DaskRunner(**kwargs)
    assert (runner._host, runner._dashboard_address) == ("0.0.0.0", None)
    assert DaskRunner()._dashboard_address == "127.0.0.1:0"


def test_a_failed_namespace_shows_its_root_cause_and_the_report_runs_without_it(
    tmp_path, cluster, caplog
):
    catalog = broken_model_catalog(tmp_path, {"m1": 2, "m2": 10}, broken="m2")
    runner = DaskRunner(address=cluster.scheduler_address, log_dir=tmp_path / "logs")
    with caplog.at_level(logging.INFO), pytest.raises(DaskRunError) as err:
        runner.run(with_report(build_pipeline(["m1", "m2"]), ["m1", "m2"]), catalog, run_id="d10")
    check_partial_run(tmp_path, runner, caplog, err, "d10", "worker tcp://127.0.0.1:")


@pytest.mark.parametrize("only_missing", [False, True])
def test_a_pipeline_without_namespaces_runs_without_a_cluster(tmp_path, only_missing):
    # `--pipeline=reporting`, or `--only-missing-outputs` with only the report missing:
    # nothing to submit, so no cluster is started (no address is given: it would be local).
    catalog = build_catalog(tmp_path, {"m1": 2, "m2": 10})
    seed_namespace_outputs(catalog)
    if only_missing:
        catalog.save("base", {"value": 5, "pid": 0, "start": 0.0, "end": 0.0})
    pipe = build_pipeline(["m1", "m2"]) if only_missing else shared_only_pipeline()
    runner = DaskRunner(log_dir=tmp_path / "logs")
    runner.run(pipe, catalog, run_id="d11", only_missing_outputs=only_missing)
    assert load(tmp_path, "combined")["value"] == 120
    assert all(r.status == "done" for r in runner.results)
    assert runner.cluster is None and runner.workers == {}


def test_only_missing_outputs_submits_only_what_is_missing(tmp_path, cluster):
    catalog = build_catalog(tmp_path, {"m1": 2, "m2": 10})
    catalog.save("base", {"value": 5, "pid": 0, "start": 0.0, "end": 0.0})
    catalog.save("m1.out", {"value": 100, "pid": 0, "start": 0.0, "end": 0.0})
    runner = DaskRunner(address=cluster.scheduler_address, log_dir=tmp_path / "logs")
    runner.run(build_pipeline(["m1", "m2"]), catalog, run_id="dask7", only_missing_outputs=True)
    assert {r.name for r in runner.results} == {"m2", "combine", "summarise_first"}
    assert load(tmp_path, "m2.out")["value"] == 51 and load(tmp_path, "combined")["value"] == 151


def test_workers_declaring_a_gpu_get_one_namespace_at_a_time(tmp_path):
    # One worker with two threads but one GPU resource (as `dask cuda worker --resources
    # GPU=1` declares): the two namespaces are submitted with resources={"GPU": 1}, so the
    # scheduler runs them one after the other although a thread is free.
    with distributed.LocalCluster(
        host="127.0.0.1",
        processes=True,
        n_workers=1,
        threads_per_worker=2,
        resources={"GPU": 1},
        dashboard_address="127.0.0.1:0",
    ) as gpu_cluster:
        runner = DaskRunner(
            address=gpu_cluster.scheduler_address, memory_gb=8, log_dir=tmp_path / "logs"
        )
        runner.run(
            build_pipeline(["m1", "m2"]),
            build_catalog(tmp_path, {"m1": 2, "m2": 10}),
            run_id="dask8",
        )
    assert runner.use_gpu
    m1, m2 = load(tmp_path, "m1.out"), load(tmp_path, "m2.out")
    assert m1["pid"] == m2["pid"]  # the one worker
    assert m1["end"] <= m2["mid_start"] or m2["end"] <= m1["mid_start"]


def _worker_state() -> dict:
    import sys

    from kedro_device_runner import dask_worker, heap

    return {
        "torch": "torch" in sys.modules,
        "nodes": "tests.kedro_device_runner.toy_nodes" in sys.modules,
        "hooks": "tests.kedro_device_runner.toy_project" in dask_worker._HOOK_MANAGERS,
        "malloc_restored": heap._done,
    }


def test_a_preloaded_worker_is_ready_before_any_task(tmp_path):
    # `dask worker ... --preload kedro_device_runner.dask_preload`: torch, the project's
    # pipelines (and so its nodes' modules) and hook manager are in place at start-up,
    # and glibc's thresholds undone (the nanny set MALLOC_TRIM_THRESHOLD_).
    with (
        distributed.LocalCluster(
            host="127.0.0.1",
            processes=True,
            n_workers=1,
            threads_per_worker=1,
            dashboard_address="127.0.0.1:0",
            preload=["kedro_device_runner.dask_preload"],
            env={"KEDRO_DEVICE_RUNNER_PACKAGE": "tests.kedro_device_runner.toy_project"},
        ) as c,
        distributed.Client(c) as client,
    ):
        (state,) = client.run(_worker_state).values()
        assert state == {"torch": True, "nodes": True, "hooks": True, "malloc_restored": True}
        runner = DaskRunner(
            address=c.scheduler_address,
            log_dir=tmp_path / "logs",
            package_name="tests.kedro_device_runner.toy_project",
        )
        runner.run(build_pipeline(["m1"]), build_catalog(tmp_path, {"m1": 2}), run_id="dask9")
    assert load(tmp_path, "combined")["value"] == 7


def test_cli_runner_params_reach_the_dask_runner():
    from kedro.framework.cli.project import _split_params

    # `kedro run --runner=kedro_device_runner.DaskRunner --runner-params=...`
    kwargs = _split_params(None, None, "address=tcp://10.0.0.5:8786,gpu=false,memory_gb=8")
    runner = DaskRunner(**kwargs, is_async=False)
    assert (runner._address, runner._gpu, runner._memory_gb) == (
        "tcp://10.0.0.5:8786",
        "false",
        8.0,
    )


def test_workers_and_this_process_share_data_through_s3(tmp_path, cluster, s3, ds_args):
    # The catalog's paths are s3:// URLs (a real S3 API on loopback): each worker process
    # saves its namespace's output to the bucket, and the shared node here reads them back.
    runner = DaskRunner(address=cluster.scheduler_address, log_dir=tmp_path / "logs")
    runner.run(build_pipeline(["m1", "m2"]), s3_catalog(tmp_path, ds_args), run_id="dask-s3")
    check_s3_outputs(tmp_path, s3[1])
