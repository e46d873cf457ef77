"""Capture memory does not grow with the number of tokens captured.

Captures ~100k and ~1M tokens (the same kind of prompts, ten times as many) from a small
random Llama-family model (d_model 64, 4 blocks; tests/tiny.py), each in a fresh process,
and prints each process's peak RSS, its growth over the RSS after the model loaded, and
the ratio of the two peaks. Target (issue 3): the peaks differ by less than 10%.

What does grow with the token count, and stays small: the prompts table itself and its
token ids (the input), and one norm/position per token when the manifest's statistics
are computed. Activations never accumulate: shards are flushed every `shard_tokens` rows
and at most `max_pending_batches` batches wait for the writer thread.

    .venv/bin/python benchmarks/capture_memory.py [--tokens 100000 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "how many apples does Tom have if the total of each number plus the left minus times equals"
).split()


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(tokens: int, model_dir: Path) -> dict:
    import pandas as pd

    from sae_reasoning.activations.capture import CaptureJob
    from sae_reasoning.models import ModelHandle, ModelSpec

    handle = ModelHandle(ModelSpec("tiny_llama", str(model_dir), converted_cache=None))
    lm = handle.load("cpu")
    # ~100 tokens per prompt with this tokenizer; measured, then scaled to the target.
    question = lambda i: " ".join(WORDS[(i + j) % len(WORDS)] for j in range(40)) + f" {i}?"
    per = len(lm.tokenizer(question(0))["input_ids"]) + 3
    n = max(1, tokens // per)
    table = pd.DataFrame(
        {
            "id": [f"q{i}" for i in range(n)],
            "benchmark": "synthetic",
            "prompt": [f"Question: {question(i)}\nAnswer:" for i in range(n)],
            "target": [f" {i % 97}" for i in range(n)],
            "answer_type": "numeric",
        }
    )
    after_load = rss_mib()
    with tempfile.TemporaryDirectory(dir=ROOT / "data") as root:
        summary = CaptureJob(handle, table, layers=[2], batch_tokens=8192).run(root)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "tokens": summary["captured"]["synthetic"],
        "after_load_mib": after_load,
        "peak_mib": peak,
        "tokens_per_second": summary["tokens_per_second"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tokens", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument(
        "--quick", action="store_true", help="10k and 100k tokens: checks the script runs"
    )
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model_dir)))
        return
    if args.quick:
        args.tokens = [10_000, 100_000]

    sys.path.insert(0, str(ROOT))
    from tests.tiny import save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_tiny_model("llama", Path(tmp) / "tiny_llama")
        results = []
        for tokens in args.tokens:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(tokens), "--model-dir", str(model_dir)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"{'tokens captured':>16} {'RSS after load':>15} {'peak RSS':>10} {'growth':>8} "
        f"{'tokens/s':>9}"
    )
    for r in results:
        print(
            f"{r['tokens']:>16,} {r['after_load_mib']:>11.0f} MiB {r['peak_mib']:>6.0f} MiB "
            f"{r['peak_mib'] - r['after_load_mib']:>4.0f} MiB {r['tokens_per_second']:>9.0f}"
        )
    lo, hi = results[0], results[-1]
    diff = hi["peak_mib"] / lo["peak_mib"] - 1
    print(
        f"peak RSS at {hi['tokens']:,} tokens vs {lo['tokens']:,}: {diff:+.1%} "
        f"(target: within 10%) {'ok' if abs(diff) < 0.10 else 'ABOVE TARGET'}"
    )


if __name__ == "__main__":
    main()
