"""What the runners share: each model namespace is one unit of work.

Scheduling is Kedro's DAG at group granularity (`Pipeline.group_nodes_by("namespace")`):
a namespace group starts once every shared node and group it depends on has finished; a
shared (un-namespaced) node runs in this process once everything it depends on has
finished. A failing group does not stop the others; whatever depends on it is skipped,
except a shared node that can do without the failed units' outputs (see
`units.partial_inputs`: a node whose function takes `**kwargs` for them runs on what
finished), and the run ends with a summary table, `logs/<run_id>/timeline.json` and an
error naming the failed namespaces and the root cause of each failure (errors.describe).

A backend (`DeviceSlotRunner`: worker processes on device slots; `DaskRunner`: a Dask
cluster) says where groups run: `_open`, `_start_groups`, `_poll`, `_cancel`, `_close`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

from kedro.io.core import generate_timestamp
from kedro.runner import AbstractRunner, Task

from kedro_device_runner.crossing import check_crossings, group_payload, lost_outputs
from kedro_device_runner.errors import describe
from kedro_device_runner.kedro_private import release_datasets
from kedro_device_runner.live import LiveView, wall_clock, write_timeline
from kedro_device_runner.memory import MemoryNeed, estimate_group_memory, load_estimator
from kedro_device_runner.node_metrics import NodeMeter, take
from kedro_device_runner.run_log import check_can_create, run_log
from kedro_device_runner.summary import failure_message, summary_table
from kedro_device_runner.text import as_bool, first_line, safe_name
from kedro_device_runner.units import (
    DONE_,
    FAILED_,
    PENDING,
    RUNNING,
    SKIPPED,
    STARTING,
    RunState,
    Unit,
    UnitResult,
    ancestors,
    can_drop,
    lost_inputs,
    owner,
    partial_inputs,
    plan,
)
from kedro_device_runner.worker import NODE_DONE, NODE_START

if TYPE_CHECKING:
    from kedro.io import CatalogProtocol
    from kedro.pipeline import Pipeline


class NamespaceRunError(RuntimeError):
    """Some namespaces (or shared nodes) failed; the others ran to completion."""


class NamespaceGroupRunner(AbstractRunner):
    """Base of the runners that run each namespace group as one unit in a worker.

    Args (shared by every backend):
        log_dir: where logs go: `<log_dir>/<run_id>/<namespace>.log` and `timeline.json`.
        package_name: the Kedro project package the workers configure (settings, hooks);
            default: the package configured in this process (`kedro run` sets it).
        memory: "auto" (default): estimate each group's memory need and place it where it
            fits; "off": no memory check.
        memory_estimator: the project's estimate of a group's memory need (see
            memory.py), a callable or its import path "package.module:function";
            default: the project setting `DEVICE_RUNNER_MEMORY_ESTIMATOR`, else none
            (only `memory_gb` in a group's `params:models.<namespace>` counts).
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
        memory_estimator: str | Callable | None = None,
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
        self._memory_estimator = memory_estimator
        self._live_mode = str(live).lower()
        self._live_interval_s = float(live_interval_s)
        self._poll_s = 0.5
        self.results: list[UnitResult] = []
        self.run_log_dir: Path | None = None
        self.timeline_path: Path | None = None
        # Which namespace runs where is this runner's live display: keep it visible in
        # projects whose logging configuration only enables `kedro` and the project.
        logger = logging.getLogger("kedro_device_runner")
        if logger.level == logging.NOTSET and logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    @property
    def _log(self) -> logging.LoggerAdapter:
        # Plain text under Kedro's RichHandler: error messages and paths hold brackets.
        return logging.LoggerAdapter(logging.getLogger(type(self).__module__), {"markup": False})

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

    def _run(
        self,
        pipeline: Pipeline,
        catalog: CatalogProtocol,
        hook_manager=None,
        run_id: str | None = None,
    ) -> None:
        state = self._prepare(pipeline, catalog, hook_manager, run_id or generate_timestamp())
        groups = [u for u in state.units.values() if u.kind == "namespace"]
        opened = False
        live = LiveView(
            f"{self._name} {state.run_id}", self._log, self._live_mode, self._live_interval_s
        )
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
        message = failure_message(self._name, self.results, self.run_log_dir)
        if message is not None:
            raise self.error_class(message)

    def _prepare(
        self, pipeline: Pipeline, catalog: CatalogProtocol, hook_manager, run_id: str
    ) -> RunState:
        """Plan the units and check, before any work, that the run can go ahead."""
        units = plan(pipeline, self._name)
        groups = [u for u in units.values() if u.kind == "namespace"]
        check_crossings(self._name, pipeline, units, catalog)
        self._warn_lost_outputs(pipeline, groups, catalog)
        payloads = {u.name: group_payload(u, catalog, run_id, self._is_async) for u in groups}
        self.run_log_dir = self._log_dir / safe_name(run_id)
        check_can_create(self.run_log_dir, f"{self._name}: log_dir")
        self.timeline_path = self.run_log_dir / "timeline.json"
        self.results = [
            UnitResult(u.name, u.kind, [n.name for n in u.nodes]) for u in units.values()
        ]
        needs = self._estimate_needs(groups, catalog)
        for r in self.results:
            need = needs.get(r.name)
            r.memory_need_bytes = need.bytes if need is not None else None
        return RunState(
            pipeline=pipeline,
            catalog=catalog,
            hook_manager=hook_manager,
            run_id=run_id,
            units=units,
            ordered=sorted(units.values(), key=lambda u: u.order),
            ancestors=ancestors(units),
            results={r.name: r for r in self.results},
            payloads=payloads,
            needs=needs,
            load_counts=Counter(chain.from_iterable(n.inputs for n in pipeline.nodes)),
            t0=time.perf_counter(),
            wall_t0=wall_clock(),
        )

    def _loop(self, state: RunState, live: LiveView, has_groups: bool = True) -> None:
        while True:
            if has_groups:  # the backend was opened only then
                self._poll(state, timeout=0)
            self._skip_downstream(state)
            if has_groups:
                self._start_groups(state)
            live.update(self.results, state.now())
            shared = next(
                (
                    u
                    for u in state.ordered
                    if u.kind == "node"
                    and state.results[u.name].status == PENDING
                    and (
                        state.deps_done(u)
                        or (state.deps_settled(u) and partial_inputs(u, state) is not None)
                    )
                ),
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
        estimator = load_estimator(self._memory_estimator)
        for unit in groups:
            inputs = {ds for n in unit.nodes for ds in n.inputs}
            needs[unit.name] = estimate_group_memory(unit.name, inputs, catalog, estimator)
        return needs

    # ------------------------------------------------------ outcome bookkeeping

    def _started(
        self,
        result: UnitResult,
        state: RunState,
        where: str,
        pid: int | None = None,
        at: float | None = None,
    ) -> None:
        result.status, result.slot = RUNNING, where
        result.started = max(result.started or 0.0, at if at is not None else state.now())
        self._log.info(
            "Namespace %s started on %s %s%s (log %s)",
            result.name,
            self.place_word,
            where,
            f" (pid {pid})" if pid else "",
            result.log_file,
        )

    def _on_node_event(
        self, result: UnitResult, event: str, node: str, metrics: dict | None = None
    ) -> None:
        if metrics:  # NODE_DONE and NODE_FAILED carry what the node cost
            result.node_resources[node] = metrics
        if event == NODE_START:
            result.current_node = node
        elif event == NODE_DONE and node not in result.done_nodes:
            result.done_nodes.append(node)
            self._log.info(
                "Namespace %s on %s %s: completed node %s (%d/%d)",
                result.name,
                self.place_word,
                result.slot,
                node,
                len(result.done_nodes),
                len(result.nodes),
            )

    def _succeeded(self, unit: Unit, state: RunState, at: float | None = None) -> None:
        result = state.results[unit.name]
        result.status, result.finished = DONE_, at if at is not None else state.now()
        result.current_node = None
        result.done_nodes = [n.name for n in unit.nodes]
        self._log.info(
            "Namespace %s finished on %s %s in %.1f s",
            result.name,
            self.place_word,
            result.slot,
            result.wall_s or 0.0,
        )
        self._release_group(unit, state)

    def _failed(
        self, unit: Unit, state: RunState, error: str, node: str | None, at: float | None = None
    ) -> None:
        r = state.results[unit.name]
        r.status, r.error, r.failed_node = FAILED_, error, node
        r.finished = at if at is not None else state.now()
        self._log.error(
            "Namespace %s FAILED on %s %s after %.1f s%s: %s (log %s)",
            r.name,
            self.place_word,
            r.slot,
            r.wall_s or 0.0,
            f" in node {node}" if node else "",
            first_line(error, 2000),
            r.log_file,
        )
        self._release_group(unit, state)

    def _release_group(self, unit: Unit, state: RunState) -> None:
        nodes = {n.name: n for n in unit.nodes}
        for name in state.results[unit.name].done_nodes:
            release_datasets(nodes[name], state.catalog, state.load_counts, state.pipeline)

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
                lost = lost_inputs(unit, state)
                if not state.deps_settled(unit) and can_drop(unit.nodes[0], lost):
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
            left_out = sorted({owner(ds, state) for ds in dropped})
            result.left_out, result.dropped_inputs = left_out, dropped
            self._log.warning(
                "Shared node %s runs on what finished, without the outputs of failed %s: "
                "%s (its function takes **kwargs for them; left out: %s)",
                node.name,
                "unit" if len(left_out) == 1 else "units",
                ", ".join(left_out),
                ", ".join(dropped),
            )
        meter = NodeMeter()
        try:
            with meter:
                Task(
                    node=node,
                    catalog=state.catalog,
                    is_async=self._is_async,
                    hook_manager=state.hook_manager,
                    run_id=state.run_id,
                ).execute()
        except Exception as exc:  # noqa: BLE001 - isolate the failure, report at the end
            error = describe(exc)
            self._log.error("Shared node %s failed: %s", node.name, error, exc_info=True)
            result.status, result.error, result.failed_node = FAILED_, error, node.name
        else:
            result.status, result.done_nodes = DONE_, [node.name]
            self._log.info("Completed node: %s", node.name)
            release_datasets(node, state.catalog, state.load_counts, state.pipeline)
        result.finished = state.now()
        result.node_resources[node.name] = meter.figures(take())

    def _warn_lost_outputs(
        self, pipeline: Pipeline, groups: list[Unit], catalog: CatalogProtocol
    ) -> None:
        for unit in groups:
            lost = lost_outputs(pipeline, unit, catalog)
            if lost:
                self._log.warning(
                    "Namespace %s: outputs %s are kept in memory by the worker process and "
                    "are not returned; persist them in the catalog to keep them.",
                    unit.name,
                    lost,
                )

    # ---------------------------------------------------------------- summary

    def _write_timeline(self, state: RunState) -> None:
        try:
            write_timeline(
                self.timeline_path,
                runner=self._name,
                run_id=state.run_id,
                started_at=state.wall_t0,
                wall_s=state.now(),
                places=self._places(),
                results=self.results,
            )
        except OSError as exc:  # a log that cannot be written must not hide the run's outcome
            self._log.warning("Could not write %s: %s", self.timeline_path, exc)

    def _log_summary(self) -> None:
        summary = summary_table(self.results)
        if summary is not None:
            table, failed = summary
            self._log.log(
                logging.ERROR if failed else logging.INFO,
                "%s summary:\n%s\nTimeline: %s",
                self._name,
                table,
                self.timeline_path,
            )
