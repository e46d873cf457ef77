"""What the project's runners share: each model namespace is one unit of work.

Scheduling is Kedro's DAG at group granularity (`Pipeline.group_nodes_by("namespace")`):
a namespace group starts once every shared node and group it depends on has finished; a
shared (un-namespaced) node runs in this process once everything it depends on has
finished. A failing group does not stop the others; whatever depends on it is skipped,
except a shared node that can do without the failed units' outputs (see
`partial_inputs`: a node whose function takes `**kwargs` for them runs on what finished),
and the run ends with a summary table, `logs/<run_id>/timeline.json` and an error naming
the failed namespaces and the root cause of each failure (see errors.describe).

A backend (`DeviceSlotRunner`: worker processes on device slots; `DaskRunner`: a Dask
cluster) says where groups run: `_open`, `_start_groups`, `_poll`, `_cancel`, `_close`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
import pickle
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from graphlib import CycleError, TopologicalSorter
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from kedro.io.core import generate_timestamp
from kedro.runner import AbstractRunner, Task

from sae_reasoning.runner.errors import describe
from sae_reasoning.runner.live import LiveView, wall_clock, write_timeline
from sae_reasoning.runner.memory import MemoryNeed, estimate_group_memory, gb
from sae_reasoning.runner.node_metrics import NodeMeter, take, totals
from sae_reasoning.runner.worker import LOG_FORMAT, GroupPayload

if TYPE_CHECKING:
    from kedro.io import CatalogProtocol
    from kedro.pipeline import Pipeline

MAIN = "main process"

# Unit states.
PENDING, STARTING, RUNNING = "pending", "starting", "running"
DONE_, FAILED_, SKIPPED = "done", "failed", "skipped"


class NamespaceRunError(RuntimeError):
    """Some namespaces (or shared nodes) failed; the others ran to completion."""


class CrossProcessDatasetError(ValueError):
    """A dataset kept in memory would have to travel between processes."""


@dataclass
class UnitResult:
    """What happened to one namespace group (kind "namespace") or shared node ("node")."""

    name: str
    kind: str
    nodes: list[str]
    slot: str = MAIN  # a device slot ("cuda:1") or a Dask worker's address
    status: str = PENDING
    # Times in seconds since the run started. A namespace's worker is launched, is ready
    # once started up (imports done), and starts running its nodes once its upstream has
    # finished; `wall_s` counts from the later of launch and upstream.
    launched: float | None = None
    ready: float | None = None
    started: float | None = None
    finished: float | None = None
    error: str = ""
    failed_node: str | None = None
    done_nodes: list[str] = field(default_factory=list)
    current_node: str | None = None
    log_file: str | None = None
    memory_need_bytes: int | None = None
    # A shared node run without the outputs of failed units (see `partial_inputs`):
    # those units, and the inputs it went without.
    left_out: list[str] = field(default_factory=list)
    dropped_inputs: list[str] = field(default_factory=list)
    # node -> what it cost (node_metrics.NodeMeter's figures + what the project published)
    node_resources: dict[str, dict] = field(default_factory=dict)

    @property
    def wall_s(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    @property
    def memory(self) -> str:
        return "" if self.memory_need_bytes is None else gb(self.memory_need_bytes)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["wall_s"] = self.wall_s
        d["nodes_done"], d["nodes_total"] = len(self.done_nodes), len(self.nodes)
        d["resources"] = totals(self.node_resources)
        for key in ("launched", "ready", "started", "finished", "wall_s"):
            if d[key] is not None:
                d[key] = round(d[key], 3)
        return d


@dataclass
class Unit:
    name: str
    kind: str  # "namespace": runs in a worker; "node": a shared node, runs here
    nodes: list  # topologically sorted
    deps: set[str]
    order: int


@dataclass
class RunState:
    pipeline: Any
    catalog: Any
    hook_manager: Any
    run_id: str
    units: dict[str, Unit]
    ordered: list[Unit]
    ancestors: dict[str, set[str]]
    results: dict[str, UnitResult]
    payloads: dict[str, bytes]
    needs: dict[str, MemoryNeed | None]
    load_counts: Counter
    t0: float
    wall_t0: float
    backend: dict = field(default_factory=dict)  # the backend's own bookkeeping

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def deps_done(self, unit: Unit) -> bool:
        return all(self.results[d].status == DONE_ for d in unit.deps)

    def deps_settled(self, unit: Unit) -> bool:
        return all(self.results[d].status in (DONE_, FAILED_, SKIPPED) for d in unit.deps)

    def bad_deps(self, unit: Unit) -> list[str]:
        return sorted(d for d in unit.deps if self.results[d].status in (FAILED_, SKIPPED))

    def pending_groups(self) -> list[Unit]:
        return [u for u in self.ordered
                if u.kind == "namespace" and self.results[u.name].status == PENDING]


class NamespaceGroupRunner(AbstractRunner):
    """Base of the runners that run each namespace group as one unit in a worker.

    Args (shared by every backend):
        log_dir: where logs go: `<log_dir>/<run_id>/<namespace>.log` and `timeline.json`.
        package_name: the Kedro project package the workers configure (settings, hooks);
            default: the package configured in this process (`kedro run` sets it).
        memory: "auto" (default): estimate each group's memory need and place it where it
            fits; "off": no memory check.
        live: "auto" (a rich table on a terminal, else log lines), "rich", "log", "off".
        live_interval_s: seconds between live log lines when nothing changes.
        is_async: load and save node inputs/outputs with threads, as in Kedro's runners.
    """

    error_class: type[NamespaceRunError] = NamespaceRunError
    place_word = "slot"  # what the logs call a place: "slot cuda:1", "worker tcp://..."

    def __init__(  # noqa: PLR0913
        self,
        log_dir: str | os.PathLike = "logs",
        package_name: str | None = None,
        memory: str = "auto",
        live: str = "auto",
        live_interval_s: float | str = 30.0,
        is_async: bool = False,
    ):
        super().__init__(is_async=as_bool(is_async))
        self._log_dir = Path(log_dir)
        self._package_name = package_name
        self._memory_mode = str(memory).lower()
        if self._memory_mode not in ("auto", "off"):
            raise ValueError(f"memory={memory!r}: expected 'auto' or 'off'.")
        self._live_mode = str(live).lower()
        self._live_interval_s = float(live_interval_s)
        self._poll_s = 0.5
        self.results: list[UnitResult] = []
        self.run_log_dir: Path | None = None
        self.timeline_path: Path | None = None
        # Which namespace runs where is this runner's live display: keep it visible in
        # projects whose logging configuration only enables `kedro` and the project.
        logger = logging.getLogger("sae_reasoning.runner")
        if logger.level == logging.NOTSET and logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    @property
    def _log(self) -> logging.LoggerAdapter:
        # Plain text under Kedro's RichHandler: error messages and paths hold brackets.
        return logging.LoggerAdapter(self._logger, {"markup": False})

    @property
    def _name(self) -> str:
        return type(self).__name__

    # ------------------------------------------------------------ backend API

    def _open(self, state: RunState, groups: list[Unit]) -> None:
        """Get the places to run on; raise (before any work) if a group fits nowhere."""
        raise NotImplementedError

    def _start_groups(self, state: RunState) -> None:
        raise NotImplementedError

    def _poll(self, state: RunState, timeout: float) -> None:
        """Take in what the workers report, waiting up to `timeout` seconds."""
        raise NotImplementedError

    def _busy(self, state: RunState) -> bool:
        raise NotImplementedError

    def _cancel(self, unit: Unit, state: RunState) -> None:
        """A started group's upstream failed: do not run it."""

    def _close(self, state: RunState) -> None:
        raise NotImplementedError

    def _places(self) -> list[dict]:
        """The slots (or workers) for the timeline: name and memory."""
        return []

    # ------------------------------------------------------------------ the run

    def _run(self, pipeline: Pipeline, catalog: CatalogProtocol, hook_manager=None,
             run_id: str | None = None) -> None:
        run_id = run_id or generate_timestamp()
        units = plan(pipeline, self._name)
        groups = [u for u in units.values() if u.kind == "namespace"]
        self._validate_crossings(pipeline, units, catalog)
        self._warn_lost_outputs(pipeline, groups, catalog)
        payloads = {u.name: self._payload(u, catalog, run_id) for u in groups}
        self.run_log_dir = self._log_dir / safe_name(run_id)
        check_can_create(self.run_log_dir, f"{self._name}: log_dir")
        self.timeline_path = self.run_log_dir / "timeline.json"
        self.results = [UnitResult(u.name, u.kind, [n.name for n in u.nodes]) for u in units.values()]
        needs = self._estimate_needs(groups, catalog)
        for r in self.results:
            need = needs.get(r.name)
            r.memory_need_bytes = need.bytes if need is not None else None

        state = RunState(
            pipeline=pipeline, catalog=catalog, hook_manager=hook_manager, run_id=run_id,
            units=units, ordered=sorted(units.values(), key=lambda u: u.order),
            ancestors=ancestors(units), results={r.name: r for r in self.results},
            payloads=payloads, needs=needs,
            load_counts=Counter(chain.from_iterable(n.inputs for n in pipeline.nodes)),
            t0=time.perf_counter(), wall_t0=wall_clock(),
        )
        opened = False
        live = LiveView(f"{self._name} {run_id}", self._log, self._live_mode, self._live_interval_s)
        with run_log(self.run_log_dir / "run.log", self._log):
            try:
                if groups:  # none (e.g. only shared nodes left to run): no backend at all
                    self._open(state, groups)  # may raise: nothing has run yet
                opened = True
                with live:
                    self._loop(state, live, has_groups=bool(groups))
            finally:
                self._close(state)  # also when `_open` raised: a client or cluster may be up
                if opened:
                    self._write_timeline(state)
            self._log_summary()
        self._raise_on_failure()

    def _loop(self, state: RunState, live: LiveView, has_groups: bool = True) -> None:
        while True:
            if has_groups:  # the backend was opened only then
                self._poll(state, timeout=0)
            self._skip_downstream(state)
            if has_groups:
                self._start_groups(state)
            live.update(self.results, state.now())
            shared = next(
                (u for u in state.ordered
                 if u.kind == "node" and state.results[u.name].status == PENDING
                 and (state.deps_done(u) or (state.deps_settled(u)
                                             and partial_inputs(u, state) is not None))),
                None,
            )
            if shared is not None:
                self._run_shared(shared, state)
            elif has_groups and self._busy(state):
                self._poll(state, timeout=self._poll_s)
            elif any(r.status == PENDING for r in self.results):  # pragma: no cover
                raise RuntimeError(f"{self._name}: nothing can run but units remain.")
            else:
                live.update(self.results, state.now())
                return

    def _estimate_needs(self, groups: list[Unit], catalog) -> dict[str, MemoryNeed | None]:
        if self._memory_mode == "off":
            return {}
        needs = {}
        for unit in groups:
            inputs = {ds for n in unit.nodes for ds in n.inputs}
            needs[unit.name] = estimate_group_memory(unit.name, inputs, catalog)
        return needs

    # ------------------------------------------------------ outcome bookkeeping

    def _started(self, result: UnitResult, state: RunState, where: str, pid: int | None = None,
                 at: float | None = None) -> None:
        result.status, result.slot = RUNNING, where
        result.started = max(result.started or 0.0, at if at is not None else state.now())
        self._log.info(
            "Namespace %s started on %s %s%s (log %s)", result.name, self.place_word, where,
            f" (pid {pid})" if pid else "", result.log_file,
        )

    def _on_node_event(self, result: UnitResult, event: str, node: str,
                       metrics: dict | None = None) -> None:
        from sae_reasoning.runner.worker import NODE_DONE, NODE_START

        if metrics:  # NODE_DONE and NODE_FAILED carry what the node cost
            result.node_resources[node] = metrics
        if event == NODE_START:
            result.current_node = node
        elif event == NODE_DONE and node not in result.done_nodes:
            result.done_nodes.append(node)
            self._log.info(
                "Namespace %s on %s %s: completed node %s (%d/%d)", result.name, self.place_word,
            result.slot, node,
                len(result.done_nodes), len(result.nodes),
            )

    def _succeeded(self, unit: Unit, state: RunState, at: float | None = None) -> None:
        result = state.results[unit.name]
        result.status, result.finished = DONE_, at if at is not None else state.now()
        result.current_node = None
        result.done_nodes = [n.name for n in unit.nodes]
        self._log.info("Namespace %s finished on %s %s in %.1f s", result.name, self.place_word,
                       result.slot, result.wall_s or 0.0)
        self._release_group(unit, state)

    def _failed(self, unit: Unit, state: RunState, error: str, node: str | None,
                at: float | None = None) -> None:
        r = state.results[unit.name]
        r.status, r.error, r.failed_node = FAILED_, error, node
        r.finished = at if at is not None else state.now()
        self._log.error(
            "Namespace %s FAILED on %s %s after %.1f s%s: %s (log %s)",
            r.name, self.place_word, r.slot, r.wall_s or 0.0, f" in node {node}" if node else "",
            first_line(error, 2000), r.log_file,
        )
        self._release_group(unit, state)

    def _release_group(self, unit: Unit, state: RunState) -> None:
        nodes = {n.name: n for n in unit.nodes}
        for name in state.results[unit.name].done_nodes:
            self._release_datasets(nodes[name], state.catalog, state.load_counts, state.pipeline)

    def _skip_downstream(self, state: RunState) -> None:
        """Skip what depends on a failed (or skipped) unit, but a shared node that can run
        without its outputs (`partial_inputs`): it waits until its upstream has settled."""
        for unit in state.ordered:  # topological order: one pass propagates
            result = state.results[unit.name]
            if result.status not in (PENDING, STARTING):
                continue
            bad = state.bad_deps(unit)
            if not bad:
                continue
            if result.status == PENDING and unit.kind == "node":
                if not state.deps_settled(unit) and can_drop(unit.nodes[0], lost_inputs(unit, state)):
                    continue  # decide once everything it waits for has finished or failed
                if state.deps_settled(unit) and partial_inputs(unit, state) is not None:
                    continue  # `_loop` runs it without them
            was_started = result.status == STARTING
            result.status, result.error = SKIPPED, f"upstream failed: {', '.join(bad)}"
            if was_started:
                self._cancel(unit, state)

    # ------------------------------------------------------------ main process

    def _run_shared(self, unit: Unit, state: RunState) -> None:
        (node,) = unit.nodes
        result = state.results[unit.name]
        result.status, result.started = RUNNING, state.now()
        if state.bad_deps(unit):  # `_loop` chose it: it can do without their outputs
            node, dropped = partial_inputs(unit, state)
            left_out = sorted({_owner(ds, state) for ds in dropped})
            result.left_out, result.dropped_inputs = left_out, dropped
            self._log.warning(
                "Shared node %s runs on what finished, without the outputs of failed %s: "
                "%s (its function takes **kwargs for them; left out: %s)",
                node.name, "unit" if len(left_out) == 1 else "units", ", ".join(left_out),
                ", ".join(dropped),
            )
        meter = NodeMeter()
        try:
            with meter:
                Task(node=node, catalog=state.catalog, is_async=self._is_async,
                     hook_manager=state.hook_manager, run_id=state.run_id).execute()
        except Exception as exc:  # noqa: BLE001 - isolate the failure, report at the end
            error = describe(exc)
            self._log.error("Shared node %s failed: %s", node.name, error, exc_info=True)
            result.status, result.error, result.failed_node = FAILED_, error, node.name
        else:
            result.status, result.done_nodes = DONE_, [node.name]
            self._log.info("Completed node: %s", node.name)
            self._release_datasets(node, state.catalog, state.load_counts, state.pipeline)
        result.finished = state.now()
        result.node_resources[node.name] = meter.figures(take())

    def _payload(self, unit: Unit, catalog: CatalogProtocol, run_id: str) -> bytes:
        names = sorted({ds for n in unit.nodes for ds in (*n.inputs, *n.outputs)})
        group = GroupPayload(namespace=unit.name, nodes=list(unit.nodes),
                             catalog=sub_catalog(catalog, names), is_async=self._is_async,
                             run_id=run_id)
        try:
            return dumps(group)
        except Exception as exc:  # noqa: BLE001 - pinpoint the culprit below
            culprits = [f"node {n.name}" for n in unit.nodes if not picklable(n)]
            culprits += [f"dataset {d}" for d in names if not picklable(catalog.get(d))]
            raise CrossProcessDatasetError(
                f"Namespace '{unit.name}' cannot be sent to a worker process: "
                f"{', '.join(culprits) or exc} cannot be pickled ({exc}). Nodes and datasets "
                "must be picklable by cloudpickle (no open files, locks or live connections)."
            ) from exc

    # ------------------------------------------------------------- validation

    def _validate_crossings(self, pipeline: Pipeline, units: dict[str, Unit],
                            catalog: CatalogProtocol) -> None:
        """Data passed between processes must go through a dataset that persists it."""
        problems = [
            f"  '{ds}' ({type(dataset).__name__}): saved by {src} in {where_text(src_owner)}, "
            f"loaded by {dst} in {where_text(dst_owner)}"
            for ds, dataset, src, src_owner, dst, dst_owner in crossings(pipeline, units, catalog)
            if ephemeral(dataset)
        ]
        if problems:
            raise CrossProcessDatasetError(
                f"{self._name} runs each namespace in its own process, so data passed "
                "between a namespace and anything outside it must be persisted. These "
                "datasets live only in memory:\n" + "\n".join(sorted(set(problems))) +
                "\nDeclare them in the catalog with a dataset that writes to disk "
                "(e.g. pickle.PickleDataset), or use SequentialRunner."
            )

    def _warn_lost_outputs(self, pipeline: Pipeline, groups: list[Unit],
                           catalog: CatalogProtocol) -> None:
        outputs = pipeline.outputs()
        for unit in groups:
            lost = sorted(
                ds for n in unit.nodes for ds in n.outputs
                if ds in outputs and ephemeral(catalog.get(ds, fallback_to_runtime_pattern=True))
            )
            if lost:
                self._log.warning(
                    "Namespace %s: outputs %s are kept in memory by the worker process and "
                    "are not returned; persist them in the catalog to keep them.",
                    unit.name, lost,
                )

    # ---------------------------------------------------------------- summary

    def _write_timeline(self, state: RunState) -> None:
        try:
            write_timeline(self.timeline_path, runner=self._name, run_id=state.run_id,
                           started_at=state.wall_t0, wall_s=state.now(), places=self._places(),
                           results=self.results)
        except OSError as exc:  # a log that cannot be written must not hide the run's outcome
            self._log.warning("Could not write %s: %s", self.timeline_path, exc)

    def _log_summary(self) -> None:
        rows = [r for r in self.results
                if r.kind == "namespace" or r.status != DONE_ or r.left_out]
        if not rows:
            return
        header = ("namespace", "slot", "status", "wall", "nodes", "memory", "error")
        table = [header] + [
            (
                r.name if r.kind == "namespace" else f"{r.name} (shared)",
                r.slot, r.status,
                f"{r.wall_s:.1f}s" if r.wall_s is not None else "-",
                f"{len(r.done_nodes)}/{len(r.nodes)}",
                r.memory or "-",
                # The root cause comes first (errors.describe): never cut before it.
                first_line(r.error, 1000)
                or (f"ran without failed {', '.join(r.left_out)}" if r.left_out else ""),
            )
            for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        failed = any(r.status in (FAILED_, SKIPPED) for r in rows)
        self._log.log(logging.ERROR if failed else logging.INFO, "%s summary:\n%s\nTimeline: %s",
                      self._name, "\n".join(lines), self.timeline_path)

    def _raise_on_failure(self) -> None:
        failed = [r for r in self.results if r.status == FAILED_]
        if not failed:
            return
        skipped = [r.name for r in self.results if r.status == SKIPPED]
        parts = [
            f"{r.name} ({first_line(r.error, 1000)}"
            + (f", in node {r.failed_node}" if r.failed_node and r.kind == "namespace" else "")
            + ")"
            for r in failed
        ]
        namespaces = [r.name for r in failed if r.kind == "namespace"]
        message = (
            f"{self._name}: {len(namespaces)} namespace(s) failed: {', '.join(namespaces)}"
            if namespaces else f"{self._name}: shared node(s) failed"
        )
        message += ". Failures: " + "; ".join(parts)
        if skipped:
            message += f". Skipped (upstream failed): {', '.join(skipped)}"
        partial = [f"{r.name} (without {', '.join(r.left_out)})" for r in self.results if r.left_out]
        if partial:
            message += f". Ran on what finished: {', '.join(partial)}"
        message += (
            f". Logs: {self.run_log_dir}. Re-run with --only-missing-outputs to run only "
            "what did not finish."
        )
        raise self.error_class(message)


# -------------------------------------------------------------------- helpers


def check_can_create(folder: Path, what: str) -> None:
    """Fail now, naming `folder`, if it could not be created (its nearest existing parent
    is a file or not writable); creates nothing: a refused run leaves nothing behind."""
    parent = Path(os.path.abspath(folder))
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {folder} cannot be created: {parent} is not a writable folder. "
                         "Pass log_dir=<a writable folder> in --runner-params.")


class _RunLogHandler(logging.FileHandler):
    """Opens (and makes the folder of) its file at the first record, not before: a run
    refused before any work leaves nothing behind. Unwritable after all (the disk went
    away): reported once, and the run goes on."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            try:
                Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
                self.stream = self._open()
            except OSError as exc:  # stop trying (this handler then drops every record)
                self.setLevel(logging.CRITICAL + 1)
                logging.getLogger(__name__).warning("Could not write the run log %s: %s",
                                                    self.baseFilename, exc)
                return
        super().emit(record)


@contextlib.contextmanager
def run_log(path: Path, log: logging.Logger) -> Iterator[None]:
    """This process's log records during the run (the runner's, the shared nodes', the
    live lines and the summary) also go to `path`, beside the namespaces' logs."""
    handler = _RunLogHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def plan(pipeline: Pipeline, runner: str = "The runner") -> dict[str, Unit]:
    """Namespace groups and shared nodes, with their dependencies, in pipeline order."""
    by_name = {n.name: n for n in pipeline.nodes}
    position = {n.name: i for i, n in enumerate(pipeline.nodes)}
    units = {}
    for group in pipeline.group_nodes_by("namespace"):
        nodes = sorted((by_name[name] for name in group.nodes), key=lambda n: position[n.name])
        kind = "namespace" if group.type == "namespace" else "node"
        units[group.name] = Unit(group.name, kind, nodes, set(group.dependencies),
                                 position[nodes[0].name])
    try:
        tuple(TopologicalSorter({u.name: u.deps for u in units.values()}).static_order())
    except CycleError as exc:
        raise ValueError(
            f"{runner}: namespaces and shared nodes depend on each other in a cycle "
            f"({' -> '.join(exc.args[1])}): a namespace runs as one unit, so a shared node "
            "cannot sit between two of its nodes. Put that node inside the namespace."
        ) from exc
    return units


def lost_inputs(unit: Unit, state: RunState) -> list[str]:
    """The inputs of shared node `unit` that failed (or skipped) units were to produce."""
    bad = set(state.bad_deps(unit))
    return sorted(ds for ds in unit.nodes[0].inputs if _owner(ds, state) in bad)


def _owner(dataset: str, state: RunState) -> str | None:
    """The unit whose node outputs `dataset` (None: an input of the run)."""
    return next((u.name for u in state.ordered for n in u.nodes if dataset in n.outputs), None)


def can_drop(node, datasets: list[str]) -> bool:
    """Whether `node` can run without `datasets`: its inputs are a dict (Kedro calls its
    function with keyword arguments) and the function takes each of those keywords only
    through `**kwargs`, so that leaving them out still makes a valid call."""
    inputs = getattr(node, "_inputs", None)
    if not datasets or not isinstance(inputs, dict):
        return False
    try:
        params = inspect.signature(node.func).parameters
    except (TypeError, ValueError):  # no signature (a builtin, some callables)
        return False
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return False
    named = {name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    lost = set(datasets)
    return all(key not in named for key, ds in inputs.items() if ds in lost)


def partial_inputs(unit: Unit, state: RunState):
    """For a shared node downstream of failed (or skipped) units: `(the node without their
    outputs, the inputs dropped)` when it can run on what finished, else None.

    The rule (generic, nothing project-specific): every input it loses is passed as a
    keyword that its function takes only through `**kwargs` (`can_drop`), and at least one
    input it takes that way remains: a node left with nothing to work on (every namespace
    failed) is skipped. Whatever a failed unit produced is dropped, also the outputs of
    its nodes that finished, so a namespace is left out as a whole.
    """
    if unit.kind != "node" or not state.bad_deps(unit):
        return None
    (node,) = unit.nodes
    lost = lost_inputs(unit, state)
    if not can_drop(node, lost):
        return None
    params = inspect.signature(node.func).parameters
    kept = {k: ds for k, ds in node._inputs.items() if ds not in set(lost)}
    if not any(k not in params for k in kept):  # nothing left for its **kwargs
        return None
    return node._copy(inputs=kept), lost


def ancestors(units: dict[str, Unit]) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for name in TopologicalSorter({u.name: u.deps for u in units.values()}).static_order():
        deps = units[name].deps
        result[name] = set(deps).union(*(result[d] for d in deps))
    return result


def crossings(pipeline: Pipeline, units: dict[str, Unit], catalog: CatalogProtocol):
    """(dataset name, dataset, producer, its owner, consumer, its owner) for every
    dataset saved in one process (a namespace's worker, or MAIN) and loaded in another."""
    where = {n.name: (u.name if u.kind == "namespace" else MAIN)
             for u in units.values() for n in u.nodes}
    producer = {ds: n for n in pipeline.nodes for ds in n.outputs}
    for node in pipeline.nodes:
        for ds in node.inputs:
            source = producer.get(ds)
            if source is None or where[source.name] == where[node.name]:
                continue
            dataset = catalog.get(ds, fallback_to_runtime_pattern=True)
            yield ds, dataset, source.name, where[source.name], node.name, where[node.name]


def sub_catalog(catalog: CatalogProtocol, names: list[str]) -> CatalogProtocol:
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
    sub.__class__ = next(c for c in type(catalog).__mro__ if picklable(c))
    return sub


def ephemeral(dataset: Any) -> bool:
    inner = getattr(dataset, "_dataset", None)  # CachedDataset keeps a persisted one inside
    if inner is not None and type(dataset).__name__ == "CachedDataset":
        return ephemeral(inner)
    return bool(getattr(dataset, "_EPHEMERAL", False))


def dumps(obj: Any) -> bytes:
    """A group for a worker process, as bytes that `pickle.loads` reads there.

    cloudpickle, not pickle: fsspec's async filesystems (s3fs, gcsfs...) hang sync wrappers
    named like their class's methods on each instance, which pickle refuses ("not the same
    object as S3FileSystem._glob"), so a kedro-datasets entry at an s3:// URL could not
    reach a worker. cloudpickle sends those by value, and importable functions by name.
    """
    import cloudpickle

    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def picklable(obj: Any) -> bool:
    try:
        dumps(obj)
    except Exception:  # noqa: BLE001
        return False
    return True


def where_text(owner: str) -> str:
    return "the main process (shared node)" if owner == MAIN else f"namespace '{owner}'"


def configured_package() -> str | None:
    from kedro.framework import project

    return project.PACKAGE_NAME


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.:" else "_" for c in name).replace(":", ".")


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def first_line(text: str, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
