"""The report's resources table, from the resource ledger (ledger.py records).

For each node, its latest record (a rerun with --only-missing-outputs leaves the other
nodes' records from the run that made them); summed per model namespace and stage.
"""

from __future__ import annotations

import pandas as pd

from sae_reasoning.ledger import STAGES
from sae_reasoning.reporting.fmt import md

SHARED = "(shared)"


def latest_per_node(records: pd.DataFrame | list[dict]) -> list[dict]:
    rows = records.to_dict("records") if isinstance(records, pd.DataFrame) else list(records)
    latest: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: str(r.get("started_at") or "")):
        latest[r["node"]] = r
    return [_clean(r) for r in latest.values()]


def _clean(r: dict) -> dict:
    # A DataFrame row holds NaN where a record lacked a field (e.g. a "running" record).
    return {k: (None if isinstance(v, float) and pd.isna(v) else v) for k, v in r.items()}


def _device(r: dict) -> str:
    return " ".join(x for x in (r.get("device"), r.get("device_name")) if x) or "?"


def _stage_key(row: dict) -> tuple:
    stage = row["stage"]
    return (
        row["namespace"] != SHARED,
        row["namespace"],
        STAGES.index(stage) if stage in STAGES else len(STAGES),
        stage,
    )


def summarise(records: pd.DataFrame | list[dict]) -> dict:
    """{"stages": one row per (namespace, stage), "nodes": the latest record of each node,
    "totals", "runs": the run ids these come from} (also data/08_reporting/resources.json)."""
    nodes = latest_per_node(records)
    groups: dict[tuple, list[dict]] = {}
    for r in nodes:
        groups.setdefault((r.get("namespace") or SHARED, r.get("stage") or "other"), []).append(r)
    stages = [dict(namespace=ns, stage=stage, **_sum(rows)) for (ns, stage), rows in groups.items()]
    stages.sort(key=_stage_key)
    return {
        "stages": stages,
        "nodes": nodes,
        "totals": _sum(nodes),
        "runs": sorted({r["run_id"] for r in nodes}),
    }


def _sum(rows: list[dict]) -> dict:
    wall = sum(r.get("wall_s") or 0.0 for r in rows)
    tokens = sum(r.get("tokens") or 0 for r in rows)
    peaks = [r["peak_memory_bytes"] for r in rows if r.get("peak_memory_bytes")]
    return {
        "nodes": len(rows),
        "wall_s": wall,
        "devices": sorted({_device(r) for r in rows}),
        "peak_memory_bytes": max(peaks) if peaks else None,
        "tokens": tokens,
        "tokens_per_s": tokens / wall if tokens and wall > 0 else None,
        "device_hours": sum(r.get("device_hours") or 0.0 for r in rows),
        "not_done": sorted(
            f"{r['node']} ({r.get('status')})" for r in rows if r.get("status") != "done"
        ),
    }


def _bytes(n) -> str:
    if not n:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 2**10:.0f} KiB"


def _wall(s: float) -> str:
    return f"{s:.1f} s" if s < 600 else f"{s / 60:.1f} min"


def section(summary: dict | None) -> list[str]:
    L = ["## Resources", ""]
    if not summary or not summary["nodes"]:
        return L + [
            "No resource ledger records (`data/09_tracking/resource_ledger/`): runs record "
            "them "
            "through `ResourceLedgerHook` (settings.py).",
            "",
        ]
    L += [
        "What each stage cost, from the latest run of each of its nodes (runs "
        f"{', '.join(f'`{r}`' for r in summary['runs'])}). "
        "Wall: the nodes' times summed (input loads, run, output saves); peak memory: CUDA max "
        "allocated on a GPU, the process's peak RSS on CPU; tokens: non-padding tokens the model "
        "forwarded (capture, baseline scoring, spliced evaluation, causal) plus the activations "
        "the SAE trainer consumed; device-hours: wall × "
        "devices held.",
        "",
        "| namespace | stage | wall | device | peak memory | tokens | tokens/s | device-hours | "
        "nodes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary["stages"] + [dict(namespace="**total**", stage="", **summary["totals"])]:
        not_done = f" ({md(', '.join(s['not_done']))})" if s["not_done"] else ""
        rate = "n/a" if s["tokens_per_s"] is None else f"{s['tokens_per_s']:,.0f}"
        L.append(
            f"| {s['namespace']} | {s['stage']} | {_wall(s['wall_s'])} | "
            f"{', '.join(s['devices'])} | "
            f"{_bytes(s['peak_memory_bytes'])} | {s['tokens']:,} | {rate} | "
            f"{s['device_hours']:.4f} | {s['nodes']}{not_done} |"
        )
    return L + [
        "",
        "Per node: `data/08_reporting/resources.json`; every record: "
        "`data/09_tracking/resource_ledger/<run_id>/<node>.json`.",
        "",
    ]
