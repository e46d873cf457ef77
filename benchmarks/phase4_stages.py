"""Each phase4 stage's cost next to its own limit, from a run's resource ledger.

Reads one run's ledger (data/09_tracking/resource_ledger/<run_id>/, the newest by default),
sums wall time and tokens per stage and node, measures in this process the rate of a bare
SmolLM2-135M forward at its best batching, and prints per stage: wall s, tokens through the
model, the bare-forward time of those tokens and the wall time as a multiple of it, then the
stage's limit (the least compute its job needs) in seconds, and wall / limit.

Limits: FLOPs from sae_reasoning.budget (forward = 2 x block parameters + 2 x blocks x
context x d_model per token, + 2 x d_model x vocab for the unembedding; SAE training 12 x
d_in x d_sae per token), with the run's own counts (ledger, manifests, sae_metrics.json,
causal_summary.json, the prompts table). L is the deepest hook layer.
  capture       every captured token once through blocks 0..L, no unembedding (capture stops
                after L). Tokens: the node's ledger count, which counts new positions only,
                so a benchmark's shared few-shot block counts once.
  baseline      every distinct prompt token once (few-shot block once per benchmark, each
                question + gold answer once: capture_activations' count) plus one forward
                per greedy token the model wrote (baseline_scores' `generated`, tokenized,
                plus the step that wrote the line break ending it, within max_new_tokens)
                but those the teacher-forced gold answer shows (the tokens agreeing with
                it and the next: scoring/greedy.py), through the whole model with the
                unembedding (budget's baseline).
  sae_training  train_sae: 12 x d_in x d_sae per training token, dense (sparse steps may
                go below it: then wall / limit < 1).
  evaluate_sae  one clean full forward over the spliced-evaluation positions, the spliced
                and the zero-ablated passes through the blocks above L only (+ unembedding;
                below L they equal the clean pass), the SAE's encoder + decoder (4 x d_in x
                d_sae) on those positions and on the held-out tokens, and the planted-
                dictionary SAE's training (12 x d_in x d_sae on its tokens).
  causal        analyse_features: budget._causal_flops (attribution forward + backward on
                the select examples; every condition, the numerical floor's rescoring of
                the clean rows (causal/floor.py) and each circuit size the run's search
                checked (causal_summary's checked_sizes) rerun the blocks above L at the
                answer positions: an open answer's last prompt token and its tokens, the
                last one's logits saying whether the line ends there; a choice's last prompt
                token and its tokens but the last) plus the clean forward of the held-out
                examples' tokens the conditions start from, which the budget leaves out;
                the token-injection control's sequences (each distinct injected token in
                each neutral passage, and the passages alone) through blocks 0..L;
                SAE: the encoder (2 x d_in x d_sae) over causal.stats_tokens (firing rates)
                and over the captured benchmark tokens (top-activating contexts).
  other nodes   no model work (data loading, plots, dashboards, probes, report): no limit.
Seconds: model FLOPs at the FLOP/s the bare full forward (logits, no hooks) reaches here at
its best batching (random token ids, no padding; best of --repeats, shapes interleaved),
SAE FLOPs at the FLOP/s of the SAE's own dense matmuls (batch 4096) measured likewise.
"within 1.5x" when wall <= 1.5 x limit. A node whose counts come from an output that is not
there (a run still going) says "no limit (<count> missing)". Counts are read from the run's
project as it is now: run this on the project's latest run.

    PYTHONPATH=$PWD/src .venv/bin/python benchmarks/phase4_stages.py [--ledger DIR]
        [--repeats 3] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sae_reasoning import budget  # noqa: E402
from sae_reasoning.stage_limits import (  # noqa: E402
    base_name,
    format_table,
    greedy_steps,
    newest_run,
    read_ledger,
    rows,
)

BARE_SHAPES = [(1, 256), (4, 256), (8, 128), (8, 256), (16, 128)]  # (batch, tokens)

# ------------------------------------------------------------------ the run's counts


def run_counts(run: Path, records: list[dict], tokenizer) -> dict:
    """The counts the limits need, from the run's project (run = <project>/data/09_tracking/
    resource_ledger/<run_id>): its parameters, prompts, manifests and evaluation outputs."""
    import pandas as pd
    from kedro.config import OmegaConfigLoader

    project = Path(run).resolve().parents[3]
    data = project / "data"
    params = OmegaConfigLoader(
        conf_source=str(project / "conf"), base_env="base", default_run_env="local"
    )["parameters"]
    ns = next(r["namespace"] for r in records if r.get("namespace"))
    layer = max(int(x) for x in params["models"][ns]["layers"])
    hook = f"blocks.{layer}.hook_resid_post"
    prompts = pd.read_parquet(data / "05_model_input/prompts.parquet")
    texts = (prompts["prompt"] + prompts["target"]).tolist()
    prompts["length"] = [len(x) for x in tokenizer(texts)["input_ids"]]
    prompts["answer_positions"] = _answer_positions(prompts, tokenizer)
    capture = params["capture"]
    by_node = {base_name(r["node"]): r for r in records}
    counts = {
        "namespace": ns,
        "layer": layer,
        "corpus_ctx": int((capture.get("corpus") or {}).get("context_tokens", 1024)),
        "prompt_ctx": float(prompts["length"].mean()),
        "prompt_tokens": (by_node.get("capture_activations") or {}).get("model_tokens"),
    }
    # Counts from outputs a node writes: absent while (or when) it has not run.
    scores = data / f"07_model_output/{ns}/baseline_scores.parquet"
    if scores.exists():
        counts["generated"] = _generated_tokens(scores, tokenizer, capture, prompts)
    metrics = data / f"07_model_output/{ns}/sae_metrics.json"
    if metrics.exists():
        counts.update(_sae_counts(json.loads(metrics.read_text())[hook]))
    elif (data / f"06_models/sae/{ns}/{hook}/cfg.json").exists():
        cfg = json.loads((data / f"06_models/sae/{ns}/{hook}/cfg.json").read_text())
        counts.update(d_in=cfg["d_in"], d_sae=cfg["d_sae"])
    if (data / f"07_model_output/{ns}/causal_summary.json").exists():
        counts["causal"] = _causal_counts(data, ns, hook, prompts, params["causal"], tokenizer)
    return counts


def _answer_positions(prompts, tokenizer) -> list[int]:
    """Per prompt, the answer-row positions whose logits scoring reads: an open answer's
    last prompt token and its tokens (the last one's logits: does the line end there, for
    exact match); a choice question's last prompt token and each choice's tokens but its
    last (the choices' log-probs)."""
    out = []
    for target, kind, choices in zip(
        prompts["target"], prompts["answer_type"], prompts["choice_targets"], strict=True
    ):
        texts = list(choices) if kind == "choice" else [target]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        out.append(sum(len(x) for x in ids) + (0 if kind == "choice" else 1))
    return out


def _sae_counts(metrics: dict) -> dict:
    planted = metrics.get("planted_dictionary") or {}
    spliced = metrics.get("spliced") or {}
    return {
        "d_in": metrics["d_in"],
        "d_sae": metrics["d_sae"],
        "heldout_tokens": metrics["n_tokens"],
        "spliced_positions": spliced.get("positions", 0),
        "spliced_ctx": spliced.get("positions", 0) / max(spliced.get("n_prompts", 1), 1),
        "planted_d_in": (planted.get("data") or {}).get("d_in", 0),
        "planted_d_sae": (planted.get("sae") or {}).get("d_sae", 0),
        "planted_tokens": (planted.get("sae") or {}).get("tokens_seen", 0),
    }


def _generated_tokens(path: Path, tokenizer, capture: dict, prompts) -> int:
    """Greedy steps the baseline needed at least (stage_limits.greedy_steps), from its
    `generated` column and the prompts' targets, at most capture.max_new_tokens each."""
    import pandas as pd

    cap = int(capture.get("max_new_tokens", 0)) if capture.get("generate") else 0
    if not cap:
        return 0
    scores = pd.read_parquet(path, columns=["row", "generated"])
    targets = prompts["target"].to_numpy()[scores["row"].to_numpy()]
    return greedy_steps(scores["generated"].fillna("").tolist(), list(targets), tokenizer, cap)


def _injection_tokens(point: dict, causal: dict, tokenizer) -> tuple[int, float]:
    """(tokens, mean sequence length) the token-injection control forwarded: every distinct
    injected token into each neutral passage, and the passages alone (causal/
    token_injection.py, the same seeded passages)."""
    from sae_reasoning.causal.token_injection import neutral_corpus, neutral_sentences

    injected = {t for v in (point.get("token_injection") or {}).values() for t in v["tokens"]}
    if not injected:
        return 0, 0.0
    n = int((causal.get("token_injection") or {}).get("n_sentences", 32))
    passages = [
        len(ids)
        for ids, _ in neutral_sentences(tokenizer, neutral_corpus(), n, causal.get("seed", 0))
    ]
    pieces = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in injected]
    tokens = sum(len(passages) * k + sum(passages) for k in pieces) + sum(passages)
    return tokens, tokens / (len(passages) * (len(pieces) + 1))


def _causal_counts(data: Path, ns: str, hook: str, prompts, causal: dict, tokenizer) -> dict:
    summary = json.loads((data / f"07_model_output/{ns}/causal_summary.json").read_text())
    point = summary["hook_points"][hook]
    heldout = {b: point["clean"][b]["n"] for b in point["benchmarks"]}
    total = max(sum(heldout.values()), 1)
    out = {}
    for b, n in heldout.items():
        rows = prompts[prompts["benchmark"] == b]
        manifest = data / f"04_feature/activations/{ns}/{b}/{hook}/manifest.json"
        own = json.loads(manifest.read_text())["n_tokens"] / len(rows)  # without few-shot
        out[b] = {
            "n_select": round(point["n_select_examples"] * n / total),
            "n_heldout": n,
            "tokens_per_example": own,
            "context": float(rows["length"].mean()),
            "answer_positions": float(rows["answer_positions"].mean()),
        }
    checked = (point.get("circuit") or {}).get("checked_sizes") or {}
    injection, injection_ctx = _injection_tokens(point, causal, tokenizer)
    return {
        "benchmarks": out,
        "params": causal,
        "circuit_checks": len(checked),
        "injection_tokens": injection,
        "injection_ctx": injection_ctx,
    }


# ------------------------------------------------------------------ measured rates


def measure_rates(lm, shape: budget.ModelShape, shapes, repeats: int) -> dict:
    """Best bare full forward (tokens/s and FLOP/s over `shapes`) and the SAE matmuls'
    FLOP/s, each the fastest of `repeats` interleaved runs."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = {s: torch.randint(1000, shape.vocab_size, s, generator=g) for s in shapes}
    d_in, d_sae, batch = shape.d_model, 8 * shape.d_model, 4096
    x, w_enc = torch.randn(batch, d_in, generator=g), torch.randn(d_in, d_sae, generator=g)
    w_dec = torch.randn(d_sae, d_in, generator=g)
    best = defaultdict(lambda: float("inf"))

    def timed(key, fn):
        start = time.perf_counter()
        fn()
        best[key] = min(best[key], time.perf_counter() - start)

    def round_():
        for s in shapes:
            timed(s, lambda s=s: lm.model(input_ids=ids[s].to(lm.device), use_cache=False))
        timed("sae", lambda: torch.relu(x @ w_enc) @ w_dec)

    with torch.no_grad():
        round_()  # warm-up (first-call allocations), not kept
        best.clear()
        for _ in range(repeats):
            round_()
    per_shape = {
        f"{b}x{n}": {
            "tok_s": b * n / best[(b, n)],
            "flop_s": budget.forward_flops(shape, b * n, n, unembed=True) / best[(b, n)],
        }
        for b, n in shapes
    }
    top = max(per_shape, key=lambda k: per_shape[k]["flop_s"])
    return {
        "bare_shape": top,
        "bare_tok_s": per_shape[top]["tok_s"],
        "model_flop_s": per_shape[top]["flop_s"],
        "sae_flop_s": 4.0 * batch * d_in * d_sae / best["sae"],
        "per_shape": per_shape,
    }


# ------------------------------------------------------------------ output


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ledger", type=Path, help="a run folder (default: the newest)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--quick", action="store_true", help="one batch shape, one repeat")
    args = ap.parse_args()
    run = args.ledger or newest_run()
    records = read_ledger(run)

    sys.path.insert(0, str(Path(__file__).parent))
    from capture import smollm2

    handle = smollm2()
    lm = handle.load()
    shape = budget.shape_from_config(handle.config())
    counts = run_counts(run, records, lm.tokenizer)
    load = os.getloadavg()
    rates = measure_rates(lm, shape, [(8, 128)] if args.quick else BARE_SHAPES, args.repeats)
    table = rows(records, counts, shape, rates)

    import torch

    print(f"run {Path(run).name} ({len(records)} nodes, {run})")
    print(
        f"machine: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} before measuring, "
        f"torch threads {torch.get_num_threads()}, device {lm.device}"
    )
    shapes = ", ".join(f"{k} {v['tok_s']:.0f} tok/s" for k, v in rates["per_shape"].items())
    print(f"bare full forward (batch x tokens): {shapes}")
    print(
        f"best: {rates['bare_shape']}, {rates['bare_tok_s']:.0f} tok/s = "
        f"{rates['model_flop_s'] / 1e9:.1f} GFLOP/s; SAE matmuls (4096 x {shape.d_model} x "
        f"{8 * shape.d_model}) {rates['sae_flop_s'] / 1e9:.1f} GFLOP/s"
    )
    print(
        "x bare: wall / (model tokens at the best bare rate); limit: the least compute the "
        "stage needs (this script's docstring) at the measured FLOP/s; x limit: wall / limit"
    )
    print(format_table(table))
    if args.json:
        args.json.write_text(
            json.dumps({"run": str(run), "rates": rates, "counts": counts, "rows": table}, indent=1)
        )


if __name__ == "__main__":
    main()
