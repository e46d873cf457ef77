"""Activation shard reads with and without digest verification, beside an SAE training step.

Same shards, one run: a store of SmolLM2-135M's shape (d_model 576, float32, CaptureJob's
16,384-token shards) read as SAE training reads it (ActivationSet.iter_batches, batch
4096, shuffled shards and rows, the massive-activation filter), one full pass each:

  unverified          ActivationSet.open(root, verify=False)
  verified, xxh3_128  first read in the process: every shard hashed (xxhash) before use
  verified, sha256    first read, as for a manifest written before xxh3_128 was recorded
  verified, cached    a second pass (or a second open) in the same process: no hashing

The passes alternate, `--repeats` times (a shared machine's speed drifts); the fastest
pass of each counts. Shards sit in the page cache after the first pass, so this times
hashing and deserialising, not the disk. For scale, the last line times this project's
SAE train_step (TopK k=32, d_sae 4608, batch 4096) on the same rows: the verification cost
per training pass is the extra time of a verified first read over an unverified one.

    .venv/bin/python benchmarks/shard_read.py [--tokens 262144] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from sae_reasoning.activations import digests as store_mod
from sae_reasoning.activations.store import ActivationSet, ShardWriter
from sae_reasoning.sae import SAEConfig, build_sae
from sae_reasoning.sae.train import TrainingConfig, train_step

HOOK = "blocks.15.hook_resid_post"
D_MODEL, SHARD_TOKENS, BATCH, D_SAE, K = 576, 16384, 4096, 4608, 32


def write(root: str, n_tokens: int) -> None:
    w = ShardWriter(
        f"{root}/gsm8k/{HOOK}",
        header={"model": "bench", "benchmark": "gsm8k", "hook_point": HOOK},
        d_model=D_MODEL,
        shard_tokens=SHARD_TOKENS,
    )
    g = torch.Generator().manual_seed(0)
    seq = 256
    for i in range(n_tokens // seq):
        w.add(
            torch.randn(seq, D_MODEL, generator=g),
            example_index=torch.full((seq,), i),
            position=torch.arange(1, seq + 1),
            token_id=torch.zeros(seq, dtype=torch.int32),
        )
    w.close()


def read_pass(root: str, mode: str) -> tuple[float, int]:
    if mode != "cached":
        store_mod.forget_verified()
    saved = store_mod.xxhash
    if mode == "sha256":
        store_mod.xxhash = None  # as for a manifest that records only sha256
    try:
        acts = ActivationSet.open(root, verify=mode != "unverified")
        start, n = time.perf_counter(), 0
        for batch in acts.iter_batches(HOOK, BATCH, seed=1):
            n += len(batch)
        return time.perf_counter() - start, n
    finally:
        store_mod.xxhash = saved


def train_rate(root: str, steps: int) -> float:
    cfg = TrainingConfig(architecture="topk", k=K, lr=1e-4)
    sae = build_sae(SAEConfig(d_in=D_MODEL, d_sae=D_SAE, architecture="topk", k=K))
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas, fused=True)
    hp, dead = cfg.hparams(cfg.sparsity_coefficient()), torch.zeros(D_SAE, dtype=torch.bool)
    batches = ActivationSet.open(root, verify=False).iter_batches(
        HOOK, BATCH, seed=2, drop_last=True
    )
    xs = [next(batches) for _ in range(2)]
    train_step(sae, opt, xs[0], cfg.lr, hp, dead, 0, "bench", None)  # warm-up
    start = time.perf_counter()
    for i in range(steps):
        train_step(sae, opt, xs[i % 2], cfg.lr, hp, dead, i + 1, "bench", None)
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tokens", type=int, default=262144)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=8)
    ap.add_argument(
        "--quick", action="store_true", help="4 shards, one repeat: checks the script runs"
    )
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.repeats, args.train_steps = 4 * SHARD_TOKENS, 1, 2

    with tempfile.TemporaryDirectory(dir="data") as root:
        write(root, args.tokens)
        acts = ActivationSet.open(root, verify=False)
        m = acts.stores["gsm8k"][HOOK].manifest
        mb = sum(e["bytes"] for e in m["shards"]) / 1e6
        print(
            f"{len(m['shards'])} shards, {m['n_tokens']} tokens x d_model {D_MODEL} float32, "
            f"{mb:.0f} MB; "
            f"xxhash {'available' if store_mod.xxhash is not None else 'MISSING (sha256 only)'}; "
            f"torch threads {torch.get_num_threads()}",
            flush=True,
        )
        modes = ["unverified", "xxh3_128", "sha256", "cached"]
        runs: dict[str, list[tuple[float, int]]] = {k: [] for k in modes}
        read_pass(root, "unverified")  # warm-up: page cache, first-call allocations
        for _ in range(args.repeats):
            for mode in modes:
                runs[mode].append(read_pass(root, mode))
        best = {k: min(t for t, _ in v) for k, v in runs.items()}
        n = runs["unverified"][0][1]
        rate = train_rate(root, args.train_steps)
        print(
            f"{'read pass (iter_batches, batch 4096)':<38} {'seconds':>8} {'tokens/s':>10} "
            f"{'MB/s':>7} {'vs unverified':>14}"
        )
        for mode, label in (
            ("unverified", "unverified"),
            ("xxh3_128", "verified, xxh3_128 (first read)"),
            ("sha256", "verified, sha256 (old manifest)"),
            ("cached", "verified, cached (second pass)"),
        ):
            t = best[mode]
            print(
                f"{label:<38} {t:>8.3f} {n / t:>10.0f} {mb / t:>7.0f} "
                f"{best['unverified'] / t:>13.2f}x"
            )
        train_s = n / rate
        print(
            f"SAE train_step (TopK k={K}, d_sae {D_SAE}): {rate:.0f} tokens/s = {train_s:.2f} s "
            "per pass over these rows; verification adds "
            f"{best['xxh3_128'] - best['unverified']:+.3f} s (xxh3_128) / "
            f"{best['sha256'] - best['unverified']:+.3f} s (sha256) to a process's first pass "
            f"({(best['xxh3_128'] - best['unverified']) / train_s:+.1%} / "
            f"{(best['sha256'] - best['unverified']) / train_s:+.1%} of its training time), "
            "nothing after"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
