"""`DeviceSlotRunner`: each model namespace runs as one unit, in its own process, on one
device slot (a GPU, or a share of the CPU cores); namespaces run in parallel up to the
number of slots, each on a slot with enough memory for it. Shared (un-namespaced) nodes
run in this process. The scheduling, failure isolation, summary, live view and timeline
are `NamespaceGroupRunner`'s (core.py); this module starts and watches the processes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from kedro_device_runner.core import NamespaceGroupRunner, NamespaceRunError
from kedro_device_runner.crossing import CrossProcessDatasetError
from kedro_device_runner.memory import (
    best_fit,
    check_fits_somewhere,
    fits,
    gb,
    parse_memory_gb,
    with_memory,
)
from kedro_device_runner.preload import configured_package
from kedro_device_runner.processes import (
    environ,
    may_use_cpu_slots,
    reap,
    start_fork_server,
    stdio_to,
    stop_all,
)
from kedro_device_runner.slots import Slot, resolve_slots
from kedro_device_runner.text import as_bool, safe_name
from kedro_device_runner.units import DONE_, STARTING, RunState, Unit, UnitResult
from kedro_device_runner.worker import (
    DONE,
    FAILED,
    GO,
    NODE_DONE,
    NODE_FAILED,
    NODE_START,
    READY,
    STOP,
    THREADS_SIGNAL,
    run_group,
)

__all__ = ["CrossProcessDatasetError", "DeviceSlotRunError", "DeviceSlotRunner", "UnitResult"]


class DeviceSlotRunError(NamespaceRunError):
    """Some namespaces (or shared nodes) failed; the others ran to completion."""


@dataclass
class _Worker:
    """A live worker process and what the parent knows of it."""

    unit: Unit
    slot: Slot
    process: Any
    conn: Any
    result: UnitResult
    go_sent: bool = False
    final: bool = False  # its outcome is known; only its exit is awaited
    exit_deadline: float = float("inf")
    threads: int = 0  # CPU threads it was last told to use (0: its slot's)
    threads_box: Any = None  # shared int the worker reads them from (worker.ThreadShare)


class DeviceSlotRunner(NamespaceGroupRunner):
    """Runs each namespace group as one unit on its own device slot, in parallel.

    Args:
        slots: "auto" (default): one slot per visible GPU, else one CPU slot per namespace
            group up to the number of cores. An int N: N slots of that kind. Or explicit
            devices: "cuda:0,cuda:2", "cpu,cpu" or a list; on the command line separate
            them with ";" or "+" (`--runner-params` splits on commas).
        memory_gb: each slot's memory in GiB, one number for all or one per slot ("8;16");
            default: measured (a GPU's free memory; CPU slots share the available RAM).
        threads_per_slot: CPU threads for each worker's torch/BLAS; default
            cores // number of slots.
        prestart: start a group's worker process on a free slot while the shared nodes
            it waits for still run, so its start-up (imports, CUDA) overlaps them.
        share_cores: once no group is left to start, hand the CPU threads of free CPU
            slots to the CPU workers still running, from their running node's next op on.
        start_method: how worker processes start. "auto" (default): CPU slots fork theirs
            from a fork server started with the runner, which imports torch and the
            project once, in the background, and never runs a torch op (a worker forked
            from a process whose OpenMP thread pool has run would hang at its first
            multi-threaded op); GPU slots spawn a fresh process. "spawn" or "forkserver":
            that for every slot. Plain "fork" is not offered, for that reason and CUDA's.
        log_dir, package_name, memory, memory_estimator, live, live_interval_s, is_async:
            see `NamespaceGroupRunner`.
    """

    error_class = DeviceSlotRunError
    place_word = "slot"

    def __init__(  # noqa: PLR0913
        self,
        slots: str | int | Sequence[str] | None = "auto",
        threads_per_slot: int | str | None = None,
        prestart: bool | str = True,
        share_cores: bool | str = True,
        start_method: str = "auto",
        memory_gb: str | float | Sequence | None = None,
        **common: Any,
    ):
        super().__init__(**common)
        self._slots_spec = slots
        self._memory_gb = memory_gb
        self._threads_per_slot = int(threads_per_slot) if threads_per_slot else None
        self._prestart = as_bool(prestart)
        self._share_cores = as_bool(share_cores)
        methods = [
            "auto",
            *(m for m in ("forkserver", "spawn") if m in multiprocessing.get_all_start_methods()),
        ]
        if start_method not in methods:
            raise ValueError(
                f"DeviceSlotRunner: start_method={start_method!r}; expected one of "
                f"{', '.join(methods)} (plain fork is unsafe after torch has run an op)."
            )
        self._start_method = start_method
        if self._start_method == "forkserver" or (
            self._start_method == "auto" and may_use_cpu_slots(slots)
        ):
            # Imports in the background while this process loads the project and runs
            # the shared nodes: the first worker's start need not wait for them.
            start_fork_server(self._package_name or configured_package())
        self._exit_grace_s = 120.0
        self.slots: list[Slot] = []

    def _get_executor(self, max_workers: int) -> None:
        # Workers are one process per namespace group (see `_launch`), not a pool:
        # a process that exits gives its GPU memory back before the slot is reused.
        return None

    # ---------------------------------------------------------------- backend

    def _open(self, state: RunState, groups: list[Unit]) -> None:
        slots = resolve_slots(self._slots_spec, len(groups), self._threads_per_slot)
        if self._memory_mode != "off":
            slots = with_memory(slots, parse_memory_gb(self._memory_gb, len(slots)))
            check_fits_somewhere(state.needs, {s.name: s.memory_bytes for s in slots})
        self.slots = slots
        state.backend.update(free=list(slots), workers={})
        self._log.info(
            "DeviceSlotRunner: %d namespace group(s) on %d slot(s): %s; logs in %s",
            len(groups),
            len(slots),
            ", ".join(
                f"{s.name} ({s.threads} CPU thread(s)"
                + (f", {gb(s.memory_bytes)}" if s.memory_bytes is not None else "")
                + ")"
                for s in slots
            ),
            self.run_log_dir,
        )

    def _places(self) -> list[dict]:
        return [
            {"name": s.name, "kind": s.kind, "memory_bytes": s.memory_bytes, "threads": s.threads}
            for s in self.slots
        ]

    def _busy(self, state: RunState) -> bool:
        return bool(state.backend.get("workers"))

    def _close(self, state: RunState) -> None:
        stop_all(state.backend.get("workers", {}).values())

    def _start_groups(self, state: RunState) -> None:
        """Send `go` to workers whose upstream has finished; start workers on free slots.

        A group whose upstream is done gets a slot first: the free slot with the least
        memory that fits it (none fits: it waits for one, others may go first). A free
        slot left over starts (`prestart`) the next group whose unfinished upstream is only
        shared nodes: its process start-up (imports, loading) overlaps them, and it cannot
        hold a slot that an upstream group needs.
        """
        workers, free = state.backend["workers"], state.backend["free"]
        for worker in workers.values():
            if not worker.go_sent and not worker.final and state.deps_done(worker.unit):
                self._go(worker, state)
        pending = state.pending_groups()
        ready = [u for u in pending if state.deps_done(u)]
        early = [u for u in pending if not state.deps_done(u) and self._may_prestart(u, state)]
        for unit in ready + early:
            if not free:
                return
            slot = best_fit(state.needs.get(unit.name), free)
            if slot is None:
                self._note_waiting(unit, state)
                continue
            free.remove(slot)
            worker = self._launch(unit, slot, state)
            workers[unit.name] = worker
            if state.deps_done(unit):
                self._go(worker, state)

    def _note_waiting(self, unit: Unit, state: RunState) -> None:
        noted = state.backend.setdefault("noted_waiting", set())
        if unit.name in noted:
            return
        noted.add(unit.name)
        need = state.needs.get(unit.name)
        places = [s.name for s in self.slots if fits(need, s.memory_bytes)]
        self._log.info(
            "Namespace %s needs %s: waits for a slot with enough memory (%s)",
            unit.name,
            gb(need.bytes if need else None),
            ", ".join(places),
        )

    def _may_prestart(self, unit: Unit, state: RunState) -> bool:
        if not self._prestart:
            return False
        waiting_on = [a for a in state.ancestors[unit.name] if state.results[a].status != DONE_]
        return all(state.units[a].kind == "node" for a in waiting_on)

    def start_method(self, slot: Slot) -> str:
        """How `slot`'s worker process starts (see the class docstring)."""
        if self._start_method != "auto":
            return self._start_method
        forkserver = "forkserver" in multiprocessing.get_all_start_methods()
        return "forkserver" if slot.kind == "cpu" and forkserver else "spawn"

    def _launch(self, unit: Unit, slot: Slot, state: RunState) -> _Worker:
        method = self.start_method(slot)
        ctx = multiprocessing.get_context(method)
        log_path = self.run_log_dir / f"{safe_name(unit.name)}.log"
        conn, child_conn = ctx.Pipe(duplex=True)
        package = self._package_name or configured_package()
        if method == "forkserver":
            start_fork_server(package)
        threads_box = ctx.RawValue("i", 0)
        process = ctx.Process(
            target=run_group,
            args=(
                child_conn,
                slot,
                str(log_path),
                package,
                state.payloads[unit.name],
                dict(os.environ),
                threads_box,
            ),
            name=f"{unit.name}@{slot.name}",
        )
        # A spawned child inherits the environment and stdout/stderr at start: its
        # CUDA_VISIBLE_DEVICES and thread counts are in force before it imports anything
        # (torch included), and whatever it prints from its first instant goes to its log.
        # A fork server's child takes this process's environment from `run_group`'s
        # arguments, and sets torch's threads itself.
        with environ(slot.env()), stdio_to(log_path):
            process.start()
        child_conn.close()
        result = state.results[unit.name]
        result.slot, result.status, result.log_file = slot.name, STARTING, str(log_path)
        result.launched = result.started = state.now()
        if not state.deps_done(unit):
            self._log.info(
                "Namespace %s: worker starting (%s) on slot %s while its upstream runs "
                "(pid %d, log %s)",
                unit.name,
                method,
                slot.name,
                process.pid,
                log_path,
            )
        return _Worker(unit, slot, process, conn, result, threads_box=threads_box)

    def _go(self, worker: _Worker, state: RunState) -> None:
        worker.conn.send(GO)
        worker.go_sent = True
        self._started(worker.result, state, worker.slot.name, worker.process.pid)

    def _cancel(self, unit: Unit, state: RunState) -> None:
        worker = state.backend["workers"].get(unit.name)
        if worker is not None:  # started early: tell it not to run
            with contextlib.suppress(OSError):
                worker.conn.send(STOP)
            self._finalise(worker)

    def _poll(self, state: RunState, timeout: float) -> None:
        """Read workers' messages (waiting up to `timeout`); free the slots of exited ones."""
        workers = state.backend.get("workers")
        if not workers:
            return
        waiting = {}
        for worker in workers.values():
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
                    self._failed(
                        worker.unit,
                        state,
                        (
                            f"worker process exited with code {worker.process.exitcode} "
                            "before reporting (killed? out of memory?)"
                        ),
                        worker.result.current_node,
                    )
                    self._finalise(worker)
        for worker in list(workers.values()):
            if worker.final and time.monotonic() > worker.exit_deadline:
                self._log.warning(
                    "Namespace %s: worker did not exit; killing it", worker.result.name
                )
                self._retire(worker, state)

    def _on_message(self, worker: _Worker, msg: dict, state: RunState) -> None:
        event = msg["event"]
        if event == READY:
            worker.result.ready = state.now()
            self._log.debug("Namespace %s: worker ready", worker.result.name)
        elif event in (NODE_START, NODE_DONE, NODE_FAILED):
            self._on_node_event(worker.result, event, msg["node"], msg.get("metrics"))
        elif event == DONE:
            self._succeeded(worker.unit, state)
            self._finalise(worker)
        elif event == FAILED:
            worker.result.done_nodes = list(msg.get("done_nodes", worker.result.done_nodes))
            self._failed(worker.unit, state, msg["error"], msg["node"])
            self._finalise(worker)

    def _finalise(self, worker: _Worker) -> None:
        # The outcome is known; the slot is freed once the process has exited (a GPU's
        # memory is only released then).
        worker.final = True
        worker.exit_deadline = time.monotonic() + self._exit_grace_s

    def _retire(self, worker: _Worker, state: RunState) -> None:
        reap(worker.process, grace_s=1.0)
        worker.conn.close()
        del state.backend["workers"][worker.result.name]
        free = state.backend["free"]
        free.append(worker.slot)
        free.sort(key=self.slots.index)
        self._share_idle_cores(state)

    def _share_idle_cores(self, state: RunState) -> None:
        """Once no group is left to start, the threads of free CPU slots go to the CPU
        workers still running (evenly), from their running node's next op on (a signal;
        see worker.ThreadShare). Without this, a long namespace would finish on its one
        slot's cores while the others idle."""
        if not self._share_cores or state.pending_groups():
            return
        free = [s for s in state.backend["free"] if s.kind == "cpu"]
        running = [
            w
            for w in state.backend["workers"].values()
            if w.slot.kind == "cpu" and w.go_sent and not w.final
        ]
        if not free or not running:
            return
        total = sum(s.threads for s in free) + sum(w.slot.threads for w in running)
        share, extra = divmod(total, len(running))
        for i, worker in enumerate(running):
            n = share + (i < extra)
            if n != (worker.threads or worker.slot.threads):
                worker.threads_box.value = worker.threads = n
                # Only a worker that said `ready` has its handler in place (SIGUSR1's
                # default would end it); the others read the box before their first node.
                if worker.result.ready is not None and THREADS_SIGNAL is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.process.pid, THREADS_SIGNAL)
                self._log.info(
                    "Namespace %s on %s: now %d CPU thread(s) (%s idle)",
                    worker.result.name,
                    worker.slot.name,
                    n,
                    ", ".join(s.name for s in free),
                )
