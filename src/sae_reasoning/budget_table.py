"""The planned budget as a reader sees it: totals over the models, and a plain-text table
(what `kedro run --pipeline=validate` prints). The plan itself is budget.py's."""

from __future__ import annotations

from sae_reasoning.budget import GiB


def summarize(plans: list[dict], n_devices: int = 1) -> dict:
    """Totals over the namespaces that could be planned (the others carry an `error`).
    Wall-clock is at least the total spread over `n_devices`, and at least the largest
    model's hours (a namespace runs on one device)."""
    ok = [p for p in plans if "error" not in p]
    hours = [p["device_hours"]["total"] for p in ok]
    return {
        "models": plans,
        "total": {
            "device_hours": round(sum(hours), 3),
            "wall_hours_at_least": round(
                max([sum(hours) / max(n_devices, 1), *hours], default=0), 3
            ),
            "n_devices": n_devices,
            "disk_gib": round(sum(p["disk_bytes"]["total"] for p in ok) / GiB, 2),
            "tokens_captured": sum(p["tokens"]["captured"] for p in ok),
        },
    }


def format_table(summary: dict) -> str:
    """The budget as a plain-text table (one row per model, then the totals)."""
    head = (
        "model",
        "params",
        "d_model",
        "d_sae",
        "hooks",
        "captured tok",
        "SAE tok/hook",
        "disk GiB",
        "capture h",
        "baseline h",
        "SAE h",
        "causal h",
        "total h",
        "memory GiB",
    )
    rows = [head]
    for p in summary["models"]:
        if "error" in p:
            rows.append((p["model"], f"no budget: {p['error']}"))
            continue
        h, mem = p["device_hours"], p.get("memory") or {}
        rows.append(
            (
                p["model"],
                _si(p["n_params"]),
                str(p["d_model"]),
                str(p["d_sae"]),
                str(len(p["hook_points"])),
                _si(p["tokens"]["captured"]),
                _si(p["tokens"]["sae_training_per_hook_point"]),
                f"{p['disk_gib']['total']:.1f}",
                *(_hours(h[k]) for k in ("capture", "baseline", "sae_training", "causal", "total")),
                str(mem.get("need_gb", "?")),
            )
        )
    t = summary["total"]
    rows.append(
        (
            "total",
            "",
            "",
            "",
            "",
            _si(t["tokens_captured"]),
            "",
            f"{t['disk_gib']:.1f}",
            "",
            "",
            "",
            "",
            f"{t['device_hours']:.2f}",
            "",
        )
    )
    widths = [max(len(r[i]) for r in rows if len(r) == len(head)) for i in range(len(head))]
    lines = [
        r[0].ljust(widths[0]) + "  " + r[1]
        if len(r) != len(head)
        else "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"on {t['n_devices']} device(s): >= {t['wall_hours_at_least']:.2f} h wall-clock")
    return "\n".join(lines)


def _hours(h: float) -> str:
    return "<0.01" if 0 < h < 0.01 else f"{h:.2f}"


def _si(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))
