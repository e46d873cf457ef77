"""Which namespace runs where, while the run goes on, and the timeline it leaves behind.

On a terminal: a rich Live table (on rich's global console, the one Kedro's RichHandler
logs to, so log lines scroll above it). Elsewhere (CI, a log file, a batch job): one log
line whenever a namespace starts, ends or moves, and every `interval_s` seconds.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from kedro_device_runner.node_metrics import totals

if TYPE_CHECKING:
    from kedro_device_runner.units import UnitResult

_ACTIVE = ("starting", "running")


class LiveView:
    """`mode`: "auto" (rich on a terminal, else log lines), "rich", "log" or "off"."""

    def __init__(
        self,
        title: str,
        logger: logging.LoggerAdapter,
        mode: str = "auto",
        interval_s: float = 30.0,
    ):
        self._title = title
        self._log = logger
        self._interval_s = float(interval_s)
        self._mode = str(mode).lower()
        self._live = None
        self._last_line = -float("inf")
        self._last_states: tuple = ()

    def __enter__(self) -> LiveView:
        if self._mode in ("auto", "rich"):
            import rich

            console = rich.get_console()
            if self._mode == "rich" or (console.is_terminal and not console.is_dumb_terminal):
                from rich.live import Live

                self._live = Live(console=console, refresh_per_second=2, transient=False)
                self._live.start()
                return self
            self._mode = "log"
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, results: list[UnitResult], now: float) -> None:
        groups = [r for r in results if r.kind == "namespace"]
        if not groups or self._mode == "off":
            return
        if self._live is not None:
            self._live.update(self._table(groups, now))
            return
        # A line when a namespace starts, ends or moves, and every interval_s: node
        # progress is in the lines in between ("completed node ...").
        states = tuple((r.name, r.status, r.slot) for r in groups)
        if states != self._last_states or now - self._last_line >= self._interval_s:
            self._last_states, self._last_line = states, now
            self._log.info("%s: %s", self._title, "; ".join(_describe(r, now) for r in groups))

    def _table(self, groups: list[UnitResult], now: float):
        from rich.table import Table

        table = Table(title=self._title, expand=False)
        for col in ("namespace", "where", "status", "nodes", "current node", "time", "memory"):
            table.add_column(col)
        colour = {
            "running": "cyan",
            "starting": "blue",
            "done": "green",
            "failed": "red",
            "skipped": "yellow",
        }
        for r in groups:
            table.add_row(
                r.name,
                r.slot if r.status != "pending" else "-",
                f"[{colour.get(r.status, 'white')}]{r.status}[/]",
                f"{len(r.done_nodes)}/{len(r.nodes)}",
                (r.current_node or "") if r.status in _ACTIVE else "",
                _elapsed(r, now),
                r.memory or "",
            )
        return table


def _describe(r: UnitResult, now: float) -> str:
    if r.status == "pending":
        return f"{r.name} waiting" + (f" (needs {r.memory})" if r.memory else "")
    if r.status == "starting" and r.started is None:  # submitted, not yet on a worker
        return f"{r.name} queued"
    details = [f"{len(r.done_nodes)}/{len(r.nodes)} nodes"]
    if r.status in _ACTIVE and r.current_node:
        details.append(f"in {r.current_node}")
    if r.started is not None:
        details.append(_elapsed(r, now))
    return f"{r.name} {r.status} on {r.slot} ({', '.join(details)})"


def _elapsed(r: UnitResult, now: float) -> str:
    if r.started is None:
        return ""
    return f"{(r.finished if r.finished is not None else now) - r.started:.1f} s"


def write_timeline(
    path: Path,
    *,
    runner: str,
    run_id: str,
    started_at: float,
    wall_s: float,
    places: list[dict],
    results: list[UnitResult],
) -> None:
    """logs/<run_id>/timeline.json: each namespace's (and shared node's) start and end on
    its slot, in seconds since the run started, plus what it needed and how it ended, and
    what each node cost (`node_resources`: wall, device, peak memory, device-hours, tokens
    where the project publishes them; summed per unit in `resources` and for the run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "runner": runner,
        "run_id": run_id,
        "started_at": datetime.fromtimestamp(started_at, timezone.utc).isoformat(),
        "wall_s": round(wall_s, 3),
        "slots": places,
        "resources": totals(
            {f"{r.name}/{n}": m for r in results for n, m in r.node_resources.items()}
        ),
        "units": [r.as_dict() for r in results],
    }
    path.write_text(json.dumps(doc, indent=2))


def wall_clock() -> float:
    return time.time()
