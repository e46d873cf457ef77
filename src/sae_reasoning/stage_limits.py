"""Per-stage cost of a run against each stage's limit: the pure part of
benchmarks/phase4_stages.py (its docstring states what each stage's limit is and why).

From ledger records (ledger.py), the run's counts and the measured rates: rows of wall s,
tokens, bare-forward time, limit FLOPs (budget.py's model) and seconds, and the verdict.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from sae_reasoning import budget

LEDGER = Path("data/09_tracking/resource_ledger")
TOLERANCE = 1.5
# node (without namespace) -> stage of this table; others keep the ledger's stage
STAGE_OF = {
    "capture_corpus": "capture",
    "capture_activations": "capture",
    "score_baseline": "baseline",
    "train_sae": "sae_training",
    "evaluate_sae": "evaluate_sae",
    "analyse_features": "causal",
    "plot_sae_training": "plots/dashboards/probes",
    "feature_dashboards": "plots/dashboards/probes",
    "train_probes": "plots/dashboards/probes",
}
ORDER = ["data_loading", "capture", "baseline", "sae_training", "evaluate_sae", "causal"]


# ------------------------------------------------------------------ the ledger


def newest_run(folder: Path = LEDGER) -> Path:
    runs = sorted(p for p in Path(folder).iterdir() if p.is_dir())
    if not runs:
        raise SystemExit(f"no run in {folder}")
    return runs[-1]  # run ids are ISO timestamps


def read_ledger(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(run).glob("*.json"))]


def base_name(node: str) -> str:
    return node.split(".")[-1]


def group(records: list[dict]) -> dict[str, list[dict]]:
    """stage -> its nodes' records, stages in pipeline order (unknown ones after)."""
    out = defaultdict(list)
    for rec in sorted(records, key=lambda r: r.get("started_at") or ""):
        out[STAGE_OF.get(base_name(rec["node"]), rec.get("stage") or "other")].append(rec)
    rank = {s: i for i, s in enumerate(ORDER)}
    return dict(sorted(out.items(), key=lambda kv: rank.get(kv[0], len(ORDER))))


# ------------------------------------------------------------------ limits


def node_limit(node: str, rec: dict, counts: dict, shape: budget.ModelShape) -> dict | None:
    """{"model_flops", "sae_flops"} the node needs at least, or None (no model work)."""
    L, fwd = counts["layer"], budget.forward_flops
    name = base_name(node)
    if name == "capture_corpus":
        return _flops(budget.capture_flops(shape, rec["model_tokens"], counts["corpus_ctx"], L))
    if name == "capture_activations":
        return _flops(budget.capture_flops(shape, rec["model_tokens"], counts["prompt_ctx"], L))
    if name == "score_baseline":
        tokens = (counts.get("prompt_tokens") or rec["model_tokens"]) + counts["generated"]
        return _flops(fwd(shape, tokens, counts["prompt_ctx"], unembed=True))
    if name == "train_sae":
        return _flops(
            0,
            budget.sae_training_flops(counts["d_in"], counts["d_sae"], rec["sae_training_tokens"]),
        )
    if name == "evaluate_sae":
        return _evaluate_limit(counts, shape)
    if name == "analyse_features":
        return _causal_limit(counts, shape)
    return None


def greedy_steps(generated: list[str], targets: list[str], tokenizer, cap: int) -> int:
    """The baseline's greedy steps at least: per example, one per token it wrote and one for
    the line break ending its answer (at most `cap` in all), less the tokens the teacher-
    forced gold answer shows (scoring/greedy.py): those on which the greedy answer agrees
    with the gold target, and the one after them. The written tokens: the `generated` text
    (stripped) tokenized after the target's leading whitespace, as the model wrote it."""
    steps = 0
    for text, target in zip(generated, targets, strict=True):
        lead = target[: len(target) - len(target.lstrip())]
        wrote = tokenizer(lead + text, add_special_tokens=False)["input_ids"] if text else []
        gold = tokenizer(target, add_special_tokens=False)["input_ids"]
        agreed = next(
            (j for j, (a, b) in enumerate(zip(wrote, gold)) if a != b), min(len(wrote), len(gold))
        )
        steps += max(0, min(cap, len(wrote) + 1) - min(cap, agreed + 1))
    return steps


def _flops(model: float, sae: float = 0.0) -> dict:
    return {"model_flops": float(model), "sae_flops": float(sae)}


def _evaluate_limit(counts: dict, shape: budget.ModelShape) -> dict:
    L, pos, ctx = counts["layer"], counts["spliced_positions"], counts["spliced_ctx"]
    model = budget.forward_flops(shape, pos, ctx, unembed=True)
    model += 2 * budget.forward_flops(shape, pos, ctx, first=L + 1, unembed=True)
    sae = 4.0 * counts["d_in"] * counts["d_sae"] * (pos + counts["heldout_tokens"])
    sae += budget.sae_training_flops(
        counts["planted_d_in"], counts["planted_d_sae"], counts["planted_tokens"]
    )
    return _flops(model, sae)


def _causal_limit(counts: dict, shape: budget.ModelShape) -> dict:
    c = counts["causal"]  # per analysed benchmark: select/heldout examples, tokens, context
    model = 0.0
    for b in c["benchmarks"].values():
        # _causal_flops takes the benchmark's size and halves it into select / heldout
        benches = {"b": (2 * b["n_select"], b["tokens_per_example"])}
        model += budget._causal_flops(
            shape,
            counts["layer"],
            benches,
            b["context"],
            c["params"],
            b["answer_positions"],
            c["circuit_checks"],
        )
        # the clean pass the conditions start from
        model += budget.forward_flops(shape, b["n_heldout"] * b["tokens_per_example"], b["context"])
    # the token-injection control: its sequences through blocks 0..L (no unembedding)
    if c.get("injection_tokens"):
        model += budget.capture_flops(
            shape, c["injection_tokens"], c["injection_ctx"], counts["layer"]
        )
    # SAE encoder (2 x d_in x d_sae a token): the firing rates' tokens and the top-activating
    # contexts' scan of the captured benchmark tokens (every feature: any architecture)
    encoded = c["params"].get("stats_tokens", 0) + (counts.get("prompt_tokens") or 0)
    return _flops(model, 2.0 * counts.get("d_in", 0) * counts.get("d_sae", 0) * encoded)


def limit_seconds(flops: dict | None, rates: dict) -> float | None:
    if flops is None:
        return None
    return flops["model_flops"] / rates["model_flop_s"] + flops["sae_flops"] / rates["sae_flop_s"]


def verdict(wall: float, limit_s: float | None) -> str:
    if limit_s is None:
        return "no model work"
    return f"within {TOLERANCE}x" if wall <= TOLERANCE * limit_s else f"above {TOLERANCE}x"


def rows(records: list[dict], counts: dict, shape, rates: dict) -> list[dict]:
    """One row per stage, then its nodes (when it has several), with every figure."""
    out = []
    for stage, recs in group(records).items():
        nodes = [_row(base_name(r["node"]), r, counts, shape, rates) for r in recs]
        out.append(_sum_row(stage, nodes, rates))
        if len(nodes) > 1:
            out += [{**n, "indent": True} for n in nodes]
    return out


def _row(label: str, rec: dict, counts, shape, rates) -> dict:
    try:
        flops, missing = node_limit(rec["node"], rec, counts, shape), None
    except KeyError as exc:  # an output the limit is counted from is not there (yet)
        flops, missing = None, exc.args[0]
    row = _figures(
        label,
        rec.get("wall_s") or 0.0,
        rec.get("model_tokens") or 0,
        rec.get("sae_training_tokens") or 0,
        flops,
        rates,
    )
    if missing:
        row["verdict"] = f"no limit ({missing} missing)"
    if rec.get("status", "done") != "done":
        row["verdict"] += f" [{rec.get('status')}]"
    return row


def _sum_row(stage: str, nodes: list[dict], rates: dict) -> dict:
    limited = [n for n in nodes if n["limit_s"] is not None]
    missing = [n["verdict"] for n in nodes if n["verdict"].startswith("no limit")]
    flops = (
        {k: sum(n[k] for n in limited) for k in ("model_flops", "sae_flops")}
        if limited and not missing  # a partial sum would pass for the stage's limit
        else None
    )
    row = _figures(
        stage,
        sum(n["wall_s"] for n in nodes),
        sum(n["model_tokens"] for n in nodes),
        sum(n["sae_tokens"] for n in nodes),
        flops,
        rates,
    )
    if missing:
        row["verdict"] = missing[0]
    return row


def _figures(label, wall, model_tokens, sae_tokens, flops, rates) -> dict:
    bare_s = model_tokens / rates["bare_tok_s"] if model_tokens else None
    limit_s = limit_seconds(flops, rates)
    return {
        "label": label,
        "wall_s": wall,
        "model_tokens": model_tokens,
        "sae_tokens": sae_tokens,
        "bare_s": bare_s,
        "x_bare": wall / bare_s if bare_s else None,
        "model_flops": (flops or {}).get("model_flops", 0.0),
        "sae_flops": (flops or {}).get("sae_flops", 0.0),
        "limit_s": limit_s,
        "x_limit": wall / limit_s if limit_s else None,
        "verdict": verdict(wall, limit_s),
    }


def _f(v, fmt: str, unit: str = "") -> str:
    return "-" if v is None else format(v, fmt) + unit


def format_table(table: list[dict]) -> str:
    head = (
        f"{'stage / node':<32} {'wall s':>8} {'model tok':>10} {'SAE tok':>9} {'bare s':>8} "
        f"{'x bare':>7} {'limit GFLOP':>11} {'limit s':>8} {'x limit':>8}  verdict"
    )
    lines = [head, "-" * len(head)]
    for r in table:
        label = ("  " + r["label"]) if r.get("indent") else r["label"]
        gflop = (r["model_flops"] + r["sae_flops"]) / 1e9 if r["limit_s"] is not None else None
        lines.append(
            f"{label[:32]:<32} {r['wall_s']:>8.1f} {r['model_tokens']:>10,} "
            f"{r['sae_tokens']:>9,} {_f(r['bare_s'], '.1f'):>8} {_f(r['x_bare'], '.2f', 'x'):>7} "
            f"{_f(gflop, '.0f'):>11} {_f(r['limit_s'], '.1f'):>8} "
            f"{_f(r['x_limit'], '.2f', 'x'):>8}  {'' if r.get('indent') else r['verdict']}"
        )
    stages = [r for r in table if not r.get("indent")]
    wall = sum(r["wall_s"] for r in stages)
    limit = sum(r["limit_s"] or 0 for r in stages)
    lines.append("-" * len(head))
    lines.append(
        f"{'all nodes':<32} {wall:>8.1f} {'':>10} {'':>9} {'':>8} {'':>7} {'':>11} "
        f"{limit:>8.1f} {wall / limit if limit else 0:>7.2f}x"
    )
    return "\n".join(lines)
