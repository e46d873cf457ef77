"""The resource ledger: what each node of each run cost.

One JSON record per node and run, `<folder>/<run_id>/<node>.json`: namespace, stage,
status, wall time, device, peak memory, tokens, device-hours. `hooks.ResourceLedgerHook`
writes it in whichever process runs the node (runner workers too: one file per node, so
parallel workers never clash; earlier runs' folders stay), first as "running" when the
node starts, then "done" or "failed", so a node that was killed stays "running" on disk.
`datasets.ledger.ResourceLedgerDataset` reads the records back for the report.

A node's window runs from its first input load to its last output save (the work itself
runs in the node: capture and SAE training take a store handle and return a manifest). Its stage
is the pipeline it belongs to in pipeline_registry.py, i.e. the `pipelines/<stage>/`
package its function comes from.

Tokens: a process-local counter. `install_token_counter` (called by models.loading on
every loaded model) counts the non-padding tokens of each forward pass, at the new
positions only (a pass on a KV cache carries a mask for the cache too); counts stay on
the model's device until read, so counting adds no GPU sync. SAE training adds the
activations its trainer consumes (kind "sae_training").
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

STAGES = ("data_loading", "capture", "sae_training", "causal", "reporting", "validate")
TOKEN_KINDS = ("model", "sae_training")
# The node meter's figures each record carries (datasets/ledger.py's columns follow them).
METER_FIELDS = (
    "wall_s",
    "device",
    "device_name",
    "devices",
    "peak_memory_bytes",
    "peak_rss_bytes",
    "rss_at_start_bytes",
    "device_hours",
)

# ---------------------------------------------------------------- token counter

_lock = threading.Lock()
_counts: dict[str, int] = {}
_pending: dict[tuple, object] = {}  # (kind, device) -> a 0-d tensor not yet read


def add_tokens(n, kind: str = "model") -> None:
    """Count `n` tokens (an int, or a 0-d tensor read only when the counts are asked for)."""
    with _lock:
        if isinstance(n, numbers.Integral):
            _counts[kind] = _counts.get(kind, 0) + int(n)
        else:
            key = (kind, str(n.device))
            _pending[key] = _pending[key] + n if key in _pending else n


def tokens() -> dict[str, int]:
    """Tokens counted in this process so far, by kind."""
    with _lock:
        for (kind, _), n in _pending.items():
            _counts[kind] = _counts.get(kind, 0) + int(n.item())
        _pending.clear()
        return dict(_counts)


def forward_tokens(args: tuple, kwargs: dict):
    """Non-padding tokens a forward call pushes through the model (its new positions)."""
    ids = kwargs.get("input_ids")
    if ids is None:
        ids = args[0] if args else kwargs.get("inputs_embeds")
    if ids is None:
        return 0
    batch, seq = ids.shape[:2]
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    if mask is None or mask.dim() != 2:
        return int(batch * seq)
    return (mask[:, -seq:] != 0).sum()


def _count_forward(module, args, kwargs) -> None:
    add_tokens(forward_tokens(args, kwargs))


def install_token_counter(model) -> None:
    """Count every forward pass of `model` (a torch module) from now on; idempotent."""
    if getattr(model, "_ledger_token_hook", None) is None:
        model._ledger_token_hook = model.register_forward_pre_hook(_count_forward, with_kwargs=True)


# --------------------------------------------------------------------- records


def stage_of(node) -> str:
    func = node.func
    while hasattr(func, "func"):  # functools.partial
        func = func.func
    parts = getattr(func, "__module__", "").split(".")
    if "pipelines" in parts[:-1]:
        return parts[parts.index("pipelines") + 1]
    return "other"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def record_path(folder: Path, run_id: str, node: str) -> Path:
    return Path(folder) / _safe(run_id) / f"{_safe(node)}.json"


def write_record(folder: Path, record: dict) -> Path:
    from sae_reasoning.activations.store import write_json_atomic

    path = record_path(folder, record["run_id"], record["node"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return path


_open_here: set[str] = set()  # nodes whose window is open in this process


def read_records(folder: str | Path) -> list[dict]:
    """Every record in the ledger folder, oldest first, leaving out the nodes still running
    in this process (the report's own node, which cannot have figures yet)."""
    out = []
    for path in sorted(Path(folder).glob("*/*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("resource ledger: skipping unreadable record %s (%s)", path, exc)
            continue
        if not (rec.get("status") == "running" and rec.get("node") in _open_here):
            out.append(rec)
    return sorted(out, key=lambda r: r.get("started_at", ""))


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


class _Window:
    def __init__(self, node):
        self.node, self.run_id, self.saved = node, None, set()
        # Imported here: `kedro_device_runner` loads Kedro's runners, which a notebook
        # importing models.loading (and so this module) does not need.
        from kedro_device_runner.node_metrics import NodeMeter

        self.tokens0 = tokens()
        self.meter = NodeMeter().start()


class LedgerRecorder:
    """Open and close nodes' windows and write their records (used by the hook)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def open(self, node) -> None:
        with self._lock:  # inputs may load in threads (is_async)
            if node.name not in self._windows:
                self._windows[node.name] = _Window(node)
                _open_here.add(node.name)

    def begin(self, node, run_id: str | None) -> None:
        self.open(node)
        w = self._windows[node.name]
        w.run_id = run_id or "no-run-id"
        self._write(self._record(w, "running"))

    def saved(self, node, dataset: str) -> None:
        w = self._windows.get(node.name)
        if w is not None:
            w.saved.add(dataset)
            if w.saved >= set(node.outputs):
                self.close(node.name, "done")

    def ran(self, node) -> None:
        if not node.outputs:
            self.close(node.name, "done")

    def close(self, name: str, status: str, error: str = "", run_id: str | None = None) -> None:
        with self._lock:
            w = self._windows.pop(name, None)
            _open_here.discard(name)
        if w is None:
            return
        w.run_id = w.run_id or run_id or "no-run-id"
        w.meter.stop(failed=status != "done")
        rec = self._record(w, status, error)
        from kedro_device_runner.node_metrics import publish

        # The runner's timeline (kedro_device_runner/node_metrics.py) takes these for this node.
        publish(**{k: rec[k] for k in ("tokens", "model_tokens", "sae_training_tokens")})
        self._write(rec)

    def close_all(self, status: str, error: str = "", run_id: str | None = None) -> None:
        for name in list(self._windows):
            self.close(name, status, error, run_id)

    def _record(self, w: _Window, status: str, error: str = "") -> dict:
        node, figures = w.node, w.meter.figures_ or {}
        now = tokens()
        used = {k: now.get(k, 0) - w.tokens0.get(k, 0) for k in TOKEN_KINDS}
        return {
            "run_id": w.run_id,
            "node": node.name,
            "namespace": (node.namespace or "").split(".")[0],
            "stage": stage_of(node),
            "status": status,
            "error": error[:500],
            "started_at": _iso(w.meter._started_at),
            "finished_at": _iso(w.meter._started_at + figures["wall_s"]) if figures else None,
            **{k: figures.get(k) for k in METER_FIELDS},
            "tokens": sum(used.values()),
            **{f"{k}_tokens": v for k, v in used.items()},
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    def _write(self, record: dict) -> None:
        try:
            write_record(self.folder, record)
        except OSError as exc:  # the ledger must never stop the run
            log.warning(
                "resource ledger: could not write %s's record in %s: %s",
                record["node"],
                self.folder,
                exc,
            )
