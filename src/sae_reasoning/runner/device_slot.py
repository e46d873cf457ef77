"""`DeviceSlotRunner`: each model namespace runs as one unit, in its own process, on one
device slot (a GPU, or a share of the CPU cores); namespaces run in parallel up to the
number of slots. Shared (un-namespaced) nodes run in this process.

Scheduling is Kedro's DAG at group granularity (`Pipeline.group_nodes_by("namespace")`):
a namespace group starts once every shared node and group it depends on has finished; a
shared node runs once everything it depends on has finished. A failing group does not
stop the others; whatever depends on it is skipped, and the run ends with a summary table
and a `DeviceSlotRunError` naming the failed namespaces.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import multiprocessing
import os
import pickle
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from itertools import chain
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kedro.io.core import generate_timestamp
from kedro.runner import AbstractRunner, Task

from sae_reasoning.runner.slots import Slot, resolve_slots
from sae_reasoning.runner.worker import (
    DONE,
    FAILED,
    GO,
    NODE_DONE,
    READY,
    STOP,
    GroupPayload,
    run_group,
)

if TYPE_CHECKING:
    from kedro.io import CatalogProtocol
    from kedro.pipeline import Pipeline
    from pluggy import PluginManager

MAIN = "main process"

# Unit states.
PENDING, STARTING, RUNNING = "pending", "starting", "running"
DONE_, FAILED_, SKIPPED = "done", "failed", "skipped"


class DeviceSlotRunError(RuntimeError):
    """Some namespaces (or shared nodes) failed; the others ran to completion."""


class CrossProcessDatasetError(ValueError):
    """A dataset kept in memory would have to travel between processes."""


@dataclass
class UnitResult:
    """What happened to one namespace group (kind "namespace") or shared node ("node")."""

    name: str
    kind: str
    nodes: list[str]
    slot: str = MAIN
    status: str = PENDING
    # Times in seconds since the run started. A namespace's worker process is launched,
    # is ready once started up (imports done), and starts running its nodes once its
    # upstream has finished; `wall_s` counts from the later of launch and upstream.
    launched: float | None = None
    ready: float | None = None
    started: float | None = None
    finished: float | None = None
    error: str = ""
    failed_node: str | None = None
    done_nodes: list[str] = field(default_factory=list)
    log_file: str | None = None

    @property
    def wall_s(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


@dataclass
class _Unit:
    name: str
    kind: str  # "namespace": runs in a worker; "node": a shared node, runs here
    nodes: list  # topologically sorted
    deps: set[str]
    order: int


@dataclass
class _Worker:
    """A live worker process and what the parent knows of it."""

    unit: _Unit
    slot: Slot
    process: Any
    conn: Any
    result: UnitResult
    go_sent: bool = False
    final: bool = False  # its outcome is known; only its exit is awaited
    exit_deadline: float = float("inf")


@dataclass
class _RunState:
    pipeline: Any
    catalog: Any
    hook_manager: Any
    run_id: str
    units: dict[str, _Unit]
    ordered: list[_Unit]
    ancestors: dict[str, set[str]]
    results: dict[str, UnitResult]
    payloads: dict[str, bytes]
    load_counts: Counter
    free: list[Slot]
    t0: float
    workers: dict[str, _Worker] = field(default_factory=dict)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def deps_done(self, unit: _Unit) -> bool:
        return all(self.results[d].status == DONE_ for d in unit.deps)


class DeviceSlotRunner(AbstractRunner):
    """Runs each namespace group as one unit on its own device slot, in parallel.

    Args:
        slots: "auto" (default): one slot per visible GPU, else one CPU slot per namespace
            group up to the number of cores. An int N: N slots of that kind. Or explicit
            devices: "cuda:0,cuda:2", "cpu,cpu" or a list; on the command line separate
            them with ";" or "+" (`--runner-params` splits on commas).
        log_dir: where per-namespace logs go: `<log_dir>/<run_id>/<namespace>.log`.
        threads_per_slot: CPU threads for each worker's torch/BLAS; default
            cores // number of slots.
        package_name: the Kedro project package the workers configure (settings, hooks);
            default: the package configured in this process (`kedro run` sets it).
        prestart: start a group's worker process on a free slot while the shared nodes
            it waits for still run, so its start-up (imports, CUDA) overlaps them.
        is_async: load and save node inputs/outputs with threads, as in Kedro's runners.
    """

    def __init__(  # noqa: PLR0913
        self,
        slots: str | int | Sequence[str] | None = "auto",
        log_dir: str | os.PathLike = "logs",
        threads_per_slot: int | str | None = None,
        package_name: str | None = None,
        prestart: bool | str = True,
        is_async: bool = False,
    ):
        super().__init__(is_async=_as_bool(is_async))
        self._slots_spec = slots
        self._log_dir = Path(log_dir)
        self._threads_per_slot = int(threads_per_slot) if threads_per_slot else None
        self._package_name = package_name
        self._prestart = _as_bool(prestart)
        self._poll_s = 0.5
        self._exit_grace_s = 120.0
        self.slots: list[Slot] = []
        self.results: list[UnitResult] = []
        self.run_log_dir: Path | None = None
        # Which namespace runs where is this runner's live display: keep it visible in
        # projects whose logging configuration only enables `kedro` and the project.
        logger = logging.getLogger("sae_reasoning.runner")
        if logger.level == logging.NOTSET and logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    @property
    def _log(self) -> logging.LoggerAdapter:
        # Plain text under Kedro's RichHandler: error messages and paths hold brackets.
        return logging.LoggerAdapter(self._logger, {"markup": False})

    def _get_executor(self, max_workers: int) -> None:
        # Workers are one spawned process per namespace group (see `_launch`), not a pool:
        # a process that exits gives its GPU memory back before the slot is reused.
        return None

    # ------------------------------------------------------------------ the run

    def _run(
        self,
        pipeline: Pipeline,
        catalog: CatalogProtocol,
        hook_manager: PluginManager | None = None,
        run_id: str | None = None,
    ) -> None:
        run_id = run_id or generate_timestamp()
        units = _plan(pipeline)
        groups = [u for u in units.values() if u.kind == "namespace"]
        self._validate_crossings(pipeline, units, catalog)
        self._warn_lost_outputs(pipeline, groups, catalog)
        payloads = {u.name: self._payload(u, catalog, run_id) for u in groups}
        self.slots = (
            resolve_slots(self._slots_spec, len(groups), self._threads_per_slot) if groups else []
        )
        self.run_log_dir = self._log_dir / _safe(run_id)
        self.results = [
            UnitResult(u.name, u.kind, [n.name for n in u.nodes]) for u in units.values()
        ]
        if groups:
            self._log.info(
                "DeviceSlotRunner: %d namespace group(s) on %d slot(s): %s; logs in %s",
                len(groups),
                len(self.slots),
                ", ".join(f"{s.name} with {s.threads} CPU thread(s)" for s in self.slots),
                self.run_log_dir,
            )

        state = _RunState(
            pipeline=pipeline,
            catalog=catalog,
            hook_manager=hook_manager,
            run_id=run_id,
            units=units,
            ordered=sorted(units.values(), key=lambda u: u.order),
            ancestors=_ancestors(units),
            results={r.name: r for r in self.results},
            payloads=payloads,
            load_counts=Counter(chain.from_iterable(n.inputs for n in pipeline.nodes)),
            free=list(self.slots),
            t0=time.perf_counter(),
        )
        try:
            while True:
                self._poll(state, timeout=0)
                self._skip_downstream(state)
                self._start_groups(state)
                shared = next(
                    (
                        u
                        for u in state.ordered
                        if u.kind == "node"
                        and state.results[u.name].status == PENDING
                        and state.deps_done(u)
                    ),
                    None,
                )
                if shared is not None:
                    self._run_shared(shared, state)
                elif state.workers:
                    self._poll(state, timeout=self._poll_s)
                elif any(r.status == PENDING for r in self.results):  # pragma: no cover
                    raise RuntimeError("DeviceSlotRunner: nothing can run but units remain.")
                else:
                    break
        finally:
            _stop(state.workers.values())

        self._log_summary()
        self._raise_on_failure()

    # ------------------------------------------------------- namespace groups

    def _start_groups(self, state: _RunState) -> None:
        """Send `go` to workers whose upstream has finished; start workers on free slots.

        A group whose upstream is done gets a slot first. A free slot left over starts
        (`prestart`) the next group whose unfinished upstream is only shared nodes: its
        process start-up (imports, loading) overlaps them, and it cannot hold a slot that
        an upstream group needs.
        """
        for worker in state.workers.values():
            if not worker.go_sent and not worker.final and state.deps_done(worker.unit):
                self._go(worker, state)
        pending = [
            u for u in state.ordered
            if u.kind == "namespace" and state.results[u.name].status == PENDING
        ]
        ready = [u for u in pending if state.deps_done(u)]
        early = [u for u in pending if not state.deps_done(u) and self._may_prestart(u, state)]
        for unit in ready + early:
            slot = self._pick_slot(unit, state.free)
            if slot is None:
                return
            state.free.remove(slot)
            worker = self._launch(unit, slot, state)
            state.workers[unit.name] = worker
            if state.deps_done(unit):
                self._go(worker, state)

    def _may_prestart(self, unit: _Unit, state: _RunState) -> bool:
        if not self._prestart:
            return False
        waiting_on = [a for a in state.ancestors[unit.name] if state.results[a].status != DONE_]
        return all(state.units[a].kind == "node" for a in waiting_on)

    def _pick_slot(self, unit: _Unit, free: list[Slot]) -> Slot | None:
        """The slot the next group starts on, or None to wait for one.

        The place for memory-aware placement (a namespace's estimated memory against each
        free slot's): for now the first free slot.
        """
        return free[0] if free else None

    def _launch(self, unit: _Unit, slot: Slot, state: _RunState) -> _Worker:
        ctx = multiprocessing.get_context("spawn")
        log_path = self.run_log_dir / f"{_safe(unit.name)}.log"
        conn, child_conn = ctx.Pipe(duplex=True)
        package = self._package_name or _configured_package()
        process = ctx.Process(
            target=run_group,
            args=(child_conn, slot, str(log_path), package, state.payloads[unit.name]),
            name=f"{unit.name}@{slot.name}",
        )
        # The child inherits the environment and stdout/stderr at start: its
        # CUDA_VISIBLE_DEVICES and thread counts are in force before it imports anything
        # (torch included), and whatever it prints from its first instant goes to its log.
        with _environ(slot.env()), _stdio_to(log_path):
            process.start()
        child_conn.close()
        result = state.results[unit.name]
        result.slot, result.status, result.log_file = slot.name, STARTING, str(log_path)
        result.launched = result.started = state.now()
        if not state.deps_done(unit):
            self._log.info(
                "Namespace %s: worker starting on slot %s while its upstream runs "
                "(pid %d, log %s)", unit.name, slot.name, process.pid, log_path,
            )
        return _Worker(unit, slot, process, conn, result)

    def _go(self, worker: _Worker, state: _RunState) -> None:
        worker.conn.send(GO)
        worker.go_sent = True
        result = worker.result
        result.status, result.started = RUNNING, max(result.started or 0.0, state.now())
        self._log.info(
            "Namespace %s started on slot %s (pid %d, log %s)",
            result.name, result.slot, worker.process.pid, result.log_file,
        )

    def _skip_downstream(self, state: _RunState) -> None:
        for unit in state.ordered:  # topological order: one pass propagates
            result = state.results[unit.name]
            if result.status not in (PENDING, STARTING):
                continue
            bad = sorted(d for d in unit.deps if state.results[d].status in (FAILED_, SKIPPED))
            if not bad:
                continue
            result.status, result.error = SKIPPED, f"upstream failed: {', '.join(bad)}"
            worker = state.workers.get(unit.name)
            if worker is not None:  # started early: tell it not to run
                with contextlib.suppress(OSError):
                    worker.conn.send(STOP)
                self._finalise(worker, state)

    def _poll(self, state: _RunState, timeout: float) -> None:
        """Read workers' messages (waiting up to `timeout`); free the slots of exited ones."""
        if not state.workers:
            return
        waiting = {}
        for worker in state.workers.values():
            waiting[worker.process.sentinel if worker.final else worker.conn] = worker
        for ready in wait(list(waiting), timeout=timeout):
            worker = waiting[ready]
            if worker.final:
                self._retire(worker, state)
                continue
            try:
                while not worker.final and worker.conn.poll():
                    self._on_message(worker, worker.conn.recv(), state)
            except (EOFError, OSError):
                if not worker.final:
                    worker.process.join(timeout=5)
                    self._fail(worker, state, (
                        f"worker process exited with code {worker.process.exitcode} "
                        "before reporting (killed? out of memory?)"
                    ), None)
        for worker in list(state.workers.values()):
            if worker.final and time.monotonic() > worker.exit_deadline:
                self._log.warning("Namespace %s: worker did not exit; killing it",
                                     worker.result.name)
                self._retire(worker, state)

    def _on_message(self, worker: _Worker, msg: dict, state: _RunState) -> None:
        result = worker.result
        event = msg["event"]
        if event == READY:
            result.ready = state.now()
            self._log.debug("Namespace %s: worker ready", result.name)
        elif event == NODE_DONE:
            result.done_nodes.append(msg["node"])
            self._log.info(
                "Namespace %s on %s: completed node %s (%d/%d)",
                result.name, result.slot, msg["node"], len(result.done_nodes), len(result.nodes),
            )
        elif event == DONE:
            result.status, result.finished = DONE_, state.now()
            self._log.info(
                "Namespace %s finished on slot %s in %.1f s", result.name, result.slot,
                result.wall_s,
            )
            self._finalise(worker, state)
        elif event == FAILED:
            self._fail(worker, state, msg["error"], msg["node"])

    def _fail(self, worker: _Worker, state: _RunState, error: str, node: str | None) -> None:
        r = worker.result
        r.status, r.error, r.failed_node, r.finished = FAILED_, error, node, state.now()
        self._log.error(
            "Namespace %s FAILED on slot %s after %.1f s%s: %s (log %s)",
            r.name, r.slot, r.wall_s or 0.0, f" in node {node}" if node else "",
            _first_line(error), r.log_file,
        )
        self._finalise(worker, state)

    def _finalise(self, worker: _Worker, state: _RunState) -> None:
        # The outcome is known; the slot is freed once the process has exited (a GPU's
        # memory is only released then).
        worker.final = True
        worker.exit_deadline = time.monotonic() + self._exit_grace_s
        nodes = {n.name: n for n in worker.unit.nodes}
        for name in worker.result.done_nodes:
            self._release_datasets(nodes[name], state.catalog, state.load_counts, state.pipeline)

    def _retire(self, worker: _Worker, state: _RunState) -> None:
        _reap(worker.process, grace_s=1.0)
        worker.conn.close()
        del state.workers[worker.result.name]
        state.free.append(worker.slot)
        state.free.sort(key=self.slots.index)

    def _payload(self, unit: _Unit, catalog: CatalogProtocol, run_id: str) -> bytes:
        names = sorted({ds for n in unit.nodes for ds in (*n.inputs, *n.outputs)})
        group = GroupPayload(
            namespace=unit.name,
            nodes=list(unit.nodes),
            catalog=_sub_catalog(catalog, names),
            is_async=self._is_async,
            run_id=run_id,
        )
        try:
            return pickle.dumps(group, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - pinpoint the culprit below
            culprits = [f"node {n.name}" for n in unit.nodes if not _picklable(n)]
            culprits += [f"dataset {d}" for d in names if not _picklable(catalog.get(d))]
            raise CrossProcessDatasetError(
                f"Namespace '{unit.name}' cannot be sent to a worker process: "
                f"{', '.join(culprits) or exc} cannot be pickled ({exc}). Nodes must be "
                "importable functions (no lambdas or closures) and datasets picklable."
            ) from exc

    # ------------------------------------------------------------ main process

    def _run_shared(self, unit: _Unit, state: _RunState) -> None:
        (node,) = unit.nodes
        result = state.results[unit.name]
        result.status, result.started = RUNNING, state.now()
        try:
            Task(node=node, catalog=state.catalog, is_async=self._is_async,
                 hook_manager=state.hook_manager, run_id=state.run_id).execute()
        except Exception as exc:  # noqa: BLE001 - isolate the failure, report at the end
            self._log.error("Shared node %s failed", node.name, exc_info=True)
            result.status, result.error, result.failed_node = FAILED_, _one_line(exc), node.name
        else:
            result.status, result.done_nodes = DONE_, [node.name]
            self._log.info("Completed node: %s", node.name)
            self._release_datasets(node, state.catalog, state.load_counts, state.pipeline)
        result.finished = state.now()

    # ------------------------------------------------------------- validation

    def _validate_crossings(self, pipeline: Pipeline, units: dict[str, _Unit],
                            catalog: CatalogProtocol) -> None:
        """Data passed between processes must go through a dataset that persists it."""
        where = {n.name: (u.name if u.kind == "namespace" else MAIN)
                 for u in units.values() for n in u.nodes}
        producer = {ds: n for n in pipeline.nodes for ds in n.outputs}
        problems = []
        for node in pipeline.nodes:
            for ds in node.inputs:
                source = producer.get(ds)
                if source is None or where[source.name] == where[node.name]:
                    continue
                dataset = catalog.get(ds, fallback_to_runtime_pattern=True)
                if _ephemeral(dataset):
                    problems.append(
                        f"  '{ds}' ({type(dataset).__name__}): saved by {source.name} in "
                        f"{_where(where[source.name])}, loaded by {node.name} in "
                        f"{_where(where[node.name])}"
                    )
        if problems:
            raise CrossProcessDatasetError(
                "DeviceSlotRunner runs each namespace in its own process, so data passed "
                "between a namespace and anything outside it must be persisted. These "
                "datasets live only in memory:\n" + "\n".join(sorted(set(problems))) +
                "\nDeclare them in the catalog with a dataset that writes to disk "
                "(e.g. pickle.PickleDataset), or use SequentialRunner."
            )

    def _warn_lost_outputs(self, pipeline: Pipeline, groups: list[_Unit],
                           catalog: CatalogProtocol) -> None:
        outputs = pipeline.outputs()
        for unit in groups:
            lost = sorted(
                ds
                for n in unit.nodes
                for ds in n.outputs
                if ds in outputs and _ephemeral(catalog.get(ds, fallback_to_runtime_pattern=True))
            )
            if lost:
                self._log.warning(
                    "Namespace %s: outputs %s are kept in memory by the worker process and "
                    "are not returned; persist them in the catalog to keep them.",
                    unit.name, lost,
                )

    # ---------------------------------------------------------------- summary

    def _log_summary(self) -> None:
        rows = [r for r in self.results if r.kind == "namespace" or r.status != DONE_]
        if not rows:
            return
        header = ("namespace", "slot", "status", "wall", "nodes", "error")
        table = [header] + [
            (
                r.name if r.kind == "namespace" else f"{r.name} (shared)",
                r.slot,
                r.status,
                f"{r.wall_s:.1f}s" if r.wall_s is not None else "-",
                f"{len(r.done_nodes)}/{len(r.nodes)}",
                _first_line(r.error, 100),
            )
            for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        failed = any(r.status in (FAILED_, SKIPPED) for r in rows)
        self._log.log(
            logging.ERROR if failed else logging.INFO,
            "DeviceSlotRunner summary:\n%s", "\n".join(lines),
        )

    def _raise_on_failure(self) -> None:
        failed = [r for r in self.results if r.status == FAILED_]
        if not failed:
            return
        skipped = [r.name for r in self.results if r.status == SKIPPED]
        parts = [
            f"{r.name} ({_first_line(r.error, 200)}"
            + (f", in node {r.failed_node}" if r.failed_node and r.kind == "namespace" else "")
            + ")"
            for r in failed
        ]
        namespaces = [r.name for r in failed if r.kind == "namespace"]
        message = (
            f"DeviceSlotRunner: {len(namespaces)} namespace(s) failed: {', '.join(namespaces)}"
            if namespaces else "DeviceSlotRunner: shared node(s) failed"
        )
        message += ". Failures: " + "; ".join(parts)
        if skipped:
            message += f". Skipped (upstream failed): {', '.join(skipped)}"
        message += (
            f". Logs: {self.run_log_dir}. Re-run with --only-missing-outputs to run only "
            "what did not finish."
        )
        raise DeviceSlotRunError(message)


# -------------------------------------------------------------------- helpers


def _plan(pipeline: Pipeline) -> dict[str, _Unit]:
    """Namespace groups and shared nodes, with their dependencies, in pipeline order."""
    by_name = {n.name: n for n in pipeline.nodes}
    position = {n.name: i for i, n in enumerate(pipeline.nodes)}
    units = {}
    for group in pipeline.group_nodes_by("namespace"):
        nodes = sorted((by_name[name] for name in group.nodes), key=lambda n: position[n.name])
        kind = "namespace" if group.type == "namespace" else "node"
        units[group.name] = _Unit(group.name, kind, nodes, set(group.dependencies),
                                  position[nodes[0].name])
    try:
        tuple(TopologicalSorter({u.name: u.deps for u in units.values()}).static_order())
    except CycleError as exc:
        raise ValueError(
            f"DeviceSlotRunner: namespaces and shared nodes depend on each other in a cycle "
            f"({' -> '.join(exc.args[1])}): a namespace runs as one unit, so a shared node "
            "cannot sit between two of its nodes. Put that node inside the namespace."
        ) from exc
    return units


def _ancestors(units: dict[str, _Unit]) -> dict[str, set[str]]:
    ancestors: dict[str, set[str]] = {}
    order = TopologicalSorter({u.name: u.deps for u in units.values()}).static_order()
    for name in order:
        deps = units[name].deps
        ancestors[name] = set(deps).union(*(ancestors[d] for d in deps))
    return ancestors


def _sub_catalog(catalog: CatalogProtocol, names: list[str]) -> CatalogProtocol:
    """A copy of the catalog holding only `names` (all materialised by `run`'s warm-up).

    Keeps versions, validators and patterns; leaves out the other datasets, in-memory
    data of the main process included. `KedroContext` composes the session's catalog
    class at run time (`DataCatalog` + `CatalogCommandsMixin`), which cannot be pickled
    by reference: the copy takes the first importable class of its MRO.
    """
    datasets = {name: catalog.get(name, fallback_to_runtime_pattern=True) for name in names}
    if not hasattr(catalog, "_datasets"):  # pragma: no cover - other CatalogProtocols
        return catalog
    sub = copy.copy(catalog)
    sub._datasets = datasets
    sub._lazy_datasets = {}
    sub.__class__ = next(c for c in type(catalog).__mro__ if _picklable(c))
    return sub


def _ephemeral(dataset: Any) -> bool:
    inner = getattr(dataset, "_dataset", None)  # CachedDataset keeps a persisted one inside
    if inner is not None and type(dataset).__name__ == "CachedDataset":
        return _ephemeral(inner)
    return bool(getattr(dataset, "_EPHEMERAL", False))


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001
        return False
    return True


def _where(owner: str) -> str:
    return "the main process (shared node)" if owner == MAIN else f"namespace '{owner}'"


def _stop(handles) -> None:
    for handle in list(handles):
        if handle.process.is_alive():
            handle.process.terminate()
        _reap(handle.process, grace_s=10.0)


def _reap(process, grace_s: float = 30.0) -> None:
    process.join(timeout=grace_s)
    if process.is_alive():
        process.kill()
        process.join()


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _stdio_to(log_path: Path) -> Iterator[None]:
    """Point this process's fds 1 and 2 at `log_path` while a child is being started."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _configured_package() -> str | None:
    from kedro.framework import project

    return project.PACKAGE_NAME


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.:" else "_" for c in name).replace(":", ".")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _first_line(text: str, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
