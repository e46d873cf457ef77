"""What the run says at its end: a table of every namespace (and every shared node that
did not simply succeed), and the message of the error raised when something failed."""

from __future__ import annotations

from pathlib import Path

from kedro_device_runner.text import first_line
from kedro_device_runner.units import DONE_, FAILED_, SKIPPED, UnitResult


def summary_table(results: list[UnitResult]) -> tuple[str, bool] | None:
    """(the table, whether anything failed or was skipped); None when there is nothing
    to show (only shared nodes, all done)."""
    rows = [r for r in results if r.kind == "namespace" or r.status != DONE_ or r.left_out]
    if not rows:
        return None
    header = ("namespace", "slot", "status", "wall", "nodes", "memory", "error")
    table = [header] + [_row(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = any(r.status in (FAILED_, SKIPPED) for r in rows)
    return "\n".join(lines), failed


def _row(r: UnitResult) -> tuple[str, ...]:
    return (
        r.name if r.kind == "namespace" else f"{r.name} (shared)",
        r.slot,
        r.status,
        f"{r.wall_s:.1f}s" if r.wall_s is not None else "-",
        f"{len(r.done_nodes)}/{len(r.nodes)}",
        r.memory or "-",
        # The root cause comes first (errors.describe): never cut before it.
        first_line(r.error, 1000)
        or (f"ran without failed {', '.join(r.left_out)}" if r.left_out else ""),
    )


def failure_message(runner: str, results: list[UnitResult], log_dir: Path | None) -> str | None:
    """What failed, what was skipped and what ran without it; None when nothing failed."""
    failed = [r for r in results if r.status == FAILED_]
    if not failed:
        return None
    skipped = [r.name for r in results if r.status == SKIPPED]
    parts = [
        f"{r.name} ({first_line(r.error, 1000)}"
        + (f", in node {r.failed_node}" if r.failed_node and r.kind == "namespace" else "")
        + ")"
        for r in failed
    ]
    namespaces = [r.name for r in failed if r.kind == "namespace"]
    message = (
        f"{runner}: {len(namespaces)} namespace(s) failed: {', '.join(namespaces)}"
        if namespaces
        else f"{runner}: shared node(s) failed"
    )
    message += ". Failures: " + "; ".join(parts)
    if skipped:
        message += f". Skipped (upstream failed): {', '.join(skipped)}"
    partial = [f"{r.name} (without {', '.join(r.left_out)})" for r in results if r.left_out]
    if partial:
        message += f". Ran on what finished: {', '.join(partial)}"
    return message + (
        f". Logs: {log_dir}. Re-run with --only-missing-outputs to run only what did not finish."
    )
