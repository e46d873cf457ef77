"""`DaskRunner`: the same namespace groups as `DeviceSlotRunner`, submitted to a Dask
cluster: for more models than one machine holds.

    kedro run --pipelines=phase4 --runner=kedro_device_runner.DaskRunner \\
        --runner-params=address=tcp://scheduler:8786

Each group is one Dask task that runs the group's nodes with Kedro's `Task` and the
project's hooks on one worker; it is submitted once its upstream groups and shared nodes
have finished (submitted earlier, Dask may queue two groups on one worker while another
idles). Shared nodes run in this process. Workers that declare a `GPU` resource
(`dask worker ... --resources GPU=1`, or dask-cuda's `LocalCUDACluster`) get one group at a
time each (`resources={"GPU": 1}` on submit). Data crosses machines only through the
catalog, whose paths must then be shared storage (an fsspec URL such as `s3://...`, or a
filesystem mounted at the same path everywhere).

Without an address a cluster is started on this machine: dask-cuda's `LocalCUDACluster`
(one worker per GPU) when there are GPUs, else a `LocalCluster` of one single-threaded
worker per CPU slot. It listens on 127.0.0.1 only (scheduler, nannies, workers and the
dashboard), unless `host` / `dashboard_address` say otherwise. No cluster is started when
no namespace is left to run (e.g. `--pipeline=reporting`).
"""

from __future__ import annotations

import logging
import socket
import uuid
from pathlib import Path
from typing import Any

from kedro_device_runner.core import NamespaceGroupRunner, NamespaceRunError
from kedro_device_runner.dask_worker import STARTED, run_group_task, warm_up
from kedro_device_runner.errors import describe
from kedro_device_runner.heap import no_trim_threshold
from kedro_device_runner.kedro_private import dataset_location, is_ephemeral
from kedro_device_runner.memory import check_fits_somewhere, fits, gb, worker_memory
from kedro_device_runner.preload import configured_package
from kedro_device_runner.slots import cpu_cores, visible_gpus
from kedro_device_runner.text import safe_name
from kedro_device_runner.units import STARTING, RunState, Unit, crossings
from kedro_device_runner.worker import NODE_DONE, NODE_FAILED, NODE_START

QUEUED = "(queued)"


class DaskRunError(NamespaceRunError):
    """Some namespaces (or shared nodes) failed on the cluster; the others finished."""


class DaskRunner(NamespaceGroupRunner):
    """Runs each namespace group as one task on a Dask cluster.

    Args:
        address: the scheduler (`tcp://host:8786`); none: start a local cluster.
        n_workers: workers of the local cluster; default one per GPU, else one per
            namespace group up to the number of cores.
        gpu: "auto" (default): ask for a `GPU` resource when the cluster's workers declare
            one; "true": require it; "false": never ask.
        threads_per_group: torch threads in a group's task (Dask's nanny starts workers
            with OMP_NUM_THREADS=1); default: cores // workers for a local cluster,
            untouched on a given cluster.
        memory_gb: each worker's memory for the fit check; default measured on the workers
            (a GPU worker's free GPU memory, else the worker's memory limit).
        host: the interface a local cluster's scheduler, nannies and workers listen on;
            default 127.0.0.1 (this machine only).
        dashboard_address: where a local cluster's dashboard listens; default
            "127.0.0.1:0" (this machine only, any free port; Dask's own default, ":0" or
            ":8787", listens on every interface); "none" or "" for no dashboard (the
            scheduler then serves only Dask's health routes, on `host`).

    The other arguments (log_dir, package_name, memory, memory_estimator, live,
    live_interval_s, is_async) are `NamespaceGroupRunner`'s.
    """

    place_word = "worker"
    error_class = DaskRunError

    def __init__(  # noqa: PLR0913
        self,
        address: str | None = None,
        n_workers: int | str | None = None,
        gpu: str | bool = "auto",
        threads_per_group: int | str | None = None,
        memory_gb: float | str | None = None,
        host: str = "127.0.0.1",
        dashboard_address: str | None = "127.0.0.1:0",
        **common: Any,
    ):
        super().__init__(**common)
        self._address = address or None
        self._n_workers = int(n_workers) if n_workers else None
        aliases = {"1": "true", "yes": "true", "0": "false", "no": "false"}
        self._gpu = aliases.get(str(gpu).lower(), str(gpu).lower())
        if self._gpu not in ("auto", "true", "false"):
            raise ValueError(f"gpu={gpu!r}: expected 'auto', 'true' or 'false'.")
        self._threads = int(threads_per_group) if threads_per_group else None
        self._memory_gb = float(memory_gb) if memory_gb not in (None, "", "auto") else None
        self._host = str(host or "127.0.0.1")
        off = dashboard_address is None or str(dashboard_address).strip().lower() in (
            "",
            "none",
            "off",
            "false",
            "no",
        )
        self._dashboard_address = None if off else str(dashboard_address).strip()
        self.workers: dict[str, dict] = {}  # address -> {"host", "memory_bytes", "gpu"}
        self.use_gpu = False
        self.cluster: Any = None
        self._warm_up_timeout_s = 300.0

    def _get_executor(self, max_workers: int) -> None:
        return None  # the Dask cluster is the executor

    # ---------------------------------------------------------------- backend

    def _open(self, state: RunState, groups: list[Unit]) -> None:
        from distributed import Client

        self.workers, self.cluster = {}, None
        if self._address:
            client = Client(self._address, timeout="60s")
        else:
            with no_trim_threshold():
                self.cluster = self._local_cluster(len(groups))
            client = Client(self.cluster)
        state.backend.update(
            client=client,
            futures={},
            seen_events=0,
            topic=f"kedro-device-runner-{uuid.uuid4().hex[:12]}",
        )
        client.wait_for_workers(1, timeout=120)
        info = _workers_info(client)
        with_gpu = [a for a, w in info.items() if (w.get("resources") or {}).get("GPU", 0) >= 1]
        if self._gpu == "true" and not with_gpu:
            raise ValueError(
                f"DaskRunner: gpu=true, but no worker of {client.scheduler.address} declares a "
                "GPU resource: start workers with `dask worker ... --resources GPU=1` (one per "
                "GPU, each seeing only its GPU, as `dask cuda worker` does)."
            )
        self.use_gpu = bool(with_gpu) and self._gpu != "false"
        eligible = with_gpu if self.use_gpu else list(info)
        memory = {a: None for a in eligible}
        if self._memory_mode != "off":
            if self._memory_gb is not None:
                memory = {a: int(self._memory_gb * 2**30) for a in eligible}
            else:
                memory = client.run(worker_memory, self.use_gpu, workers=eligible)
            check_fits_somewhere(state.needs, memory)
        self.workers = {
            a: {"host": info[a].get("host"), "memory_bytes": memory.get(a), "gpu": self.use_gpu}
            for a in eligible
        }
        if self._threads is None and self.cluster is not None and not self.use_gpu:
            self._threads = max(1, cpu_cores() // max(1, len(eligible)))
        self._warn_local_paths(state, info)
        self._warm_up(client, state, list(self.workers))
        self._log.info(
            "DaskRunner: %d namespace group(s) on %s, %d worker(s)%s: %s; logs in %s",
            len(groups),
            client.scheduler.address,
            len(eligible),
            " with a GPU resource each" if self.use_gpu else "",
            ", ".join(f"{a} ({gb(w['memory_bytes'])})" for a, w in self.workers.items()),
            self.run_log_dir,
        )

    def _warm_up(self, client, state: RunState, workers: list[str]) -> None:
        """Import torch and the project on every worker (`warm_up`) while the shared nodes
        run here, so no namespace task pays for it: one small task per worker, ahead of
        any namespace's (a preloaded worker finishes it at once)."""
        package = self._package_name or configured_package()
        state.backend["warm"] = [
            client.submit(
                warm_up,
                package,
                workers=[address],
                allow_other_workers=False,
                pure=False,
                key=f"warm-up-{uuid.uuid4().hex[:8]}",
            )
            for address in workers
        ]

    def _await_warm_up(self, state: RunState) -> None:
        """Before the first namespace is submitted: a worker still warming up looks busy to
        the scheduler, which would queue two namespaces on the other worker."""
        if state.backend.get("warm_awaited"):
            return
        state.backend["warm_awaited"] = True
        from distributed import wait

        try:
            wait(state.backend.get("warm", []), timeout=self._warm_up_timeout_s)
        except TimeoutError:  # a worker busy with someone else's work: submit anyway
            self._log.info(
                "DaskRunner: workers still warming up after %.0f s; submitting",
                self._warm_up_timeout_s,
            )

    def _local_cluster(self, n_groups: int):
        from distributed import LocalCluster

        gpus = visible_gpus() if self._gpu != "false" else []
        if gpus:
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError as exc:
                raise ImportError(
                    "DaskRunner without an address on a machine with GPUs starts dask-cuda's "
                    "LocalCUDACluster (one worker per GPU): `pip install dask-cuda`, or use "
                    "DeviceSlotRunner on one machine, or pass gpu=false."
                ) from exc
            n = self._n_workers or len(gpus)
            return LocalCUDACluster(
                CUDA_VISIBLE_DEVICES=",".join(gpus[:n]),
                threads_per_worker=1,
                resources={"GPU": 1},
                host=self._host,
                dashboard_address=self._dashboard_address,
            )
        n = self._n_workers or max(1, min(n_groups, cpu_cores()))
        return LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host=self._host,
            dashboard_address=self._dashboard_address,
        )

    def _places(self) -> list[dict]:
        return [{"name": a, **w} for a, w in self.workers.items()]

    def _busy(self, state: RunState) -> bool:
        return bool(state.backend.get("futures"))

    def _close(self, state: RunState) -> None:
        client = state.backend.get("client")
        if client is not None:
            futures = list(state.backend.get("futures", {}).values())
            if futures:  # only when the run stops early (an error in this process)
                client.cancel(futures)
            _log_warm_up(self._log, state.backend.get("warm", []))
            client.close()
        if self.cluster is not None:
            self.cluster.close()

    def _start_groups(self, state: RunState) -> None:
        client, futures = state.backend["client"], state.backend["futures"]
        package = self._package_name or configured_package()
        for unit in state.pending_groups():
            if not state.deps_done(unit):
                continue
            self._await_warm_up(state)
            need = state.needs.get(unit.name)
            places = [a for a, w in self.workers.items() if fits(need, w["memory_bytes"])]
            kwargs: dict[str, Any] = {}
            if self.use_gpu:
                kwargs["resources"] = {"GPU": 1}
            if len(places) < len(self.workers):  # only where it fits; Dask queues it there
                kwargs.update(workers=places, allow_other_workers=False)
            log_path = (self.run_log_dir / f"{safe_name(unit.name)}.log").resolve()
            future = client.submit(
                run_group_task,
                unit.name,
                state.payloads[unit.name],
                str(log_path),
                package,
                state.backend["topic"],
                self._threads,
                key=f"{safe_name(unit.name)}-{uuid.uuid4().hex[:8]}",
                pure=False,
                **kwargs,
            )
            futures[unit.name] = future
            result = state.results[unit.name]
            result.status, result.slot, result.log_file = STARTING, QUEUED, str(log_path)
            result.launched = state.now()
            where = f" (to {', '.join(places)}: enough memory)" if "workers" in kwargs else ""
            self._log.info("Namespace %s submitted%s", unit.name, where)

    def _poll(self, state: RunState, timeout: float) -> None:
        futures = state.backend.get("futures")
        if not futures:
            return
        if timeout > 0 and not any(f.done() for f in futures.values()):
            from distributed import wait

            try:
                wait(list(futures.values()), timeout=timeout, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
        # Which groups finished, before reading the events: the worker sent a group's events
        # (node figures included) before its result, so they are all in by now.
        finished = [name for name, future in futures.items() if future.done()]
        self._read_events(state)
        for name in finished:
            future = futures.pop(name)
            unit, result = state.units[name], state.results[name]
            if future.status == "finished":
                out = future.result()
                self._keep_log(result.log_file, out.pop("log", ""))
                at = out["time"] - state.wall_t0
                if result.started is None:  # events may arrive after the result
                    self._started(
                        result,
                        state,
                        out["worker"],
                        out.get("pid"),
                        at=out.get("started", out["time"]) - state.wall_t0,
                    )
                if out["status"] == "done":
                    self._succeeded(unit, state, at=at)
                else:
                    result.done_nodes = list(out.get("done_nodes", []))
                    self._failed(unit, state, out["error"], out["node"], at=at)
            else:  # the task itself failed: a worker died (KilledWorker), or was cancelled
                exc = future.exception() if future.status == "error" else None
                error = describe(exc) if exc is not None else f"task {future.status}"
                self._failed(unit, state, error, result.current_node)

    def _read_events(self, state: RunState) -> None:
        events = state.backend["client"].get_events(state.backend["topic"])
        new = events[state.backend["seen_events"] :]
        state.backend["seen_events"] = len(events)
        for _ts, msg in new:
            result = state.results.get(msg.get("namespace"))
            if result is None or result.finished is not None:
                continue
            if msg["event"] == STARTED:
                result.ready = msg["time"] - state.wall_t0
                self._started(
                    result, state, msg["worker"], msg.get("pid"), at=msg["time"] - state.wall_t0
                )
            elif msg["event"] in (NODE_START, NODE_DONE, NODE_FAILED):
                self._on_node_event(result, msg["event"], msg["node"], msg.get("metrics"))

    def _keep_log(self, log_file: str | None, text: str) -> None:
        # A worker on another machine wrote the log on its own disk: keep a copy here.
        if log_file and text and not Path(log_file).exists():
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            Path(log_file).write_text(text)

    def _warn_local_paths(self, state: RunState, info: dict) -> None:
        local = {"127.0.0.1", "localhost", "::1", socket.gethostname()}
        remote = [a for a, w in info.items() if w.get("host") not in local | _host_ips()]
        if not remote:
            return
        paths = sorted(
            {
                f"{ds} ({dataset_location(dataset)[0]})"
                for ds, dataset, *_ in crossings(state.pipeline, state.units, state.catalog)
                if not is_ephemeral(dataset) and dataset_location(dataset)[1] == "file"
            }
        )
        if paths:
            self._log.warning(
                "DaskRunner: workers on other machines (%s) load and save these datasets at "
                "local paths: %s. They must be on a filesystem shared at the same path, or "
                "use fsspec URLs (s3://, gs://, abfs://...) in the catalog.",
                ", ".join(remote),
                ", ".join(paths),
            )


# -------------------------------------------------------------------- helpers


def _log_warm_up(log: logging.Logger, futures: list) -> None:
    done = [f.result() for f in futures if f.status == "finished"]
    if done:
        log.info(
            "DaskRunner: %d worker(s) warmed up (torch and the project imported) in %s s",
            len(done),
            ", ".join(f"{t:.1f}" for t in done),
        )
    failed = [f for f in futures if f.status == "error"]
    for f in failed:  # a namespace task on that worker meets the same error and reports it
        log.warning("DaskRunner: warming up a worker failed: %s", describe(f.exception()))


def _workers_info(client) -> dict[str, dict]:
    try:
        return dict(client.scheduler_info(n_workers=-1)["workers"])
    except TypeError:  # older distributed: every worker is listed
        return dict(client.scheduler_info()["workers"])


def _host_ips() -> set[str]:
    try:
        return set(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        return set()


__all__ = ["DaskRunError", "DaskRunner", "run_group_task"]
