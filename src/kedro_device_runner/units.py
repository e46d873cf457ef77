"""The units of a run and their state: each namespace group, and each shared
(un-namespaced) node, is one unit; a unit starts once the units it depends on are done.

`plan` groups the pipeline (`Pipeline.group_nodes_by("namespace")`); `partial_inputs`
says whether a shared node downstream of failed units can run on what finished;
`crossings` lists the datasets that pass between processes.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any

from kedro_device_runner.kedro_private import node_input_map, node_with_inputs
from kedro_device_runner.memory import MemoryNeed, gb
from kedro_device_runner.node_metrics import totals

if TYPE_CHECKING:
    from kedro.io import CatalogProtocol
    from kedro.pipeline import Pipeline

MAIN = "main process"

# Unit states.
PENDING, STARTING, RUNNING = "pending", "starting", "running"
DONE_, FAILED_, SKIPPED = "done", "failed", "skipped"


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
        return [
            u
            for u in self.ordered
            if u.kind == "namespace" and self.results[u.name].status == PENDING
        ]


def plan(pipeline: Pipeline, runner: str = "The runner") -> dict[str, Unit]:
    """Namespace groups and shared nodes, with their dependencies, in pipeline order."""
    by_name = {n.name: n for n in pipeline.nodes}
    position = {n.name: i for i, n in enumerate(pipeline.nodes)}
    units = {}
    for group in pipeline.group_nodes_by("namespace"):
        nodes = sorted((by_name[name] for name in group.nodes), key=lambda n: position[n.name])
        kind = "namespace" if group.type == "namespace" else "node"
        units[group.name] = Unit(
            group.name, kind, nodes, set(group.dependencies), position[nodes[0].name]
        )
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
    return sorted(ds for ds in unit.nodes[0].inputs if owner(ds, state) in bad)


def owner(dataset: str, state: RunState) -> str | None:
    """The unit whose node outputs `dataset` (None: an input of the run)."""
    return next((u.name for u in state.ordered for n in u.nodes if dataset in n.outputs), None)


def can_drop(node, datasets: list[str]) -> bool:
    """Whether `node` can run without `datasets`: its inputs are a dict (Kedro calls its
    function with keyword arguments) and the function takes each of those keywords only
    through `**kwargs`, so that leaving them out still makes a valid call."""
    inputs = node_input_map(node)
    if not datasets or inputs is None:
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
    kept = {k: ds for k, ds in node_input_map(node).items() if ds not in set(lost)}
    if not any(k not in params for k in kept):  # nothing left for its **kwargs
        return None
    return node_with_inputs(node, kept), lost


def ancestors(units: dict[str, Unit]) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for name in TopologicalSorter({u.name: u.deps for u in units.values()}).static_order():
        deps = units[name].deps
        result[name] = set(deps).union(*(result[d] for d in deps))
    return result


def crossings(pipeline: Pipeline, units: dict[str, Unit], catalog: CatalogProtocol):
    """(dataset name, dataset, producer, its owner, consumer, its owner) for every
    dataset saved in one process (a namespace's worker, or MAIN) and loaded in another."""
    where = {
        n.name: (u.name if u.kind == "namespace" else MAIN) for u in units.values() for n in u.nodes
    }
    producer = {ds: n for n in pipeline.nodes for ds in n.outputs}
    for node in pipeline.nodes:
        for ds in node.inputs:
            source = producer.get(ds)
            if source is None or where[source.name] == where[node.name]:
                continue
            dataset = catalog.get(ds, fallback_to_runtime_pattern=True)
            yield ds, dataset, source.name, where[source.name], node.name, where[node.name]


def where_text(place: str) -> str:
    return "the main process (shared node)" if place == MAIN else f"namespace '{place}'"
