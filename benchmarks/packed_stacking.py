"""Stacked conditions as they ran before a6dd852 against the same conditions packed along the
sequence axis, as scoring/stacked.py runs them since (AnswerBatch.run(packed=True)).

stacked  K copies of the batch's R answer rows: K*R rows of S tokens, each on its own copy
         of its row's cached context (AnswerBatch.run(stack=K)); attention reads the
         context K times
packed   R rows of K*S tokens on one copy of the context: a 4D mask lets each copy's tokens
         see the context and, causally, their own copy only, and position ids restart per
         copy; attention reads the context once

Both start from the clean residual at block --layer (as the causal sweep does) with no
condition applied, so every copy's logits should be the clean pass's up to float rounding:
printed per copy for both. Then --pairs timings, stacked and packed one after the other.

    PYTHONPATH=$PWD/src .venv/bin/python benchmarks/packed_stacking.py [--stack 6]
        [--layer 15] [--rows 16] [--pairs 8]       (needs a phase4 run's prompts table)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from capture import smollm2  # noqa: E402

from sae_reasoning.models.hooks import recording  # noqa: E402
from sae_reasoning.models.partial_forward import start_at  # noqa: E402
from sae_reasoning.scoring import EncodedBenchmark, encode_prompts, iter_answer_batches  # noqa: E402


def packed_logits(model, layer, batch, resid, k) -> list[torch.Tensor]:
    """The K copies' logits [R, S, V] from one packed pass (scoring/stacked.py's way)."""
    with start_at(model, layer, resid.repeat(1, k, 1)), torch.no_grad():
        out = batch.run(model, stack=k, from_layer=layer + 1, packed=True)
    return list(out.split(batch.ids.shape[1], dim=1))


def stacked_logits(model, layer, batch, resid, k) -> list[torch.Tensor]:
    """The K copies' logits [R, S, V] from K*R rows on K copies of the context (before a6dd852)."""
    with start_at(model, layer, resid.repeat(k, 1, 1)), torch.no_grad():
        out = batch.run(model, stack=k, from_layer=layer + 1)
    return list(out.split(batch.ids.shape[0]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="data/05_model_input/prompts.parquet")
    ap.add_argument("--stack", type=int, default=6)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=8)
    args = ap.parse_args()
    lm = smollm2().load()
    enc = encode_prompts(lm.tokenizer, pd.read_parquet(args.prompts))[0]
    bench = [EncodedBenchmark(enc.name, enc.prefix, enc.examples[: args.rows])]
    batch = next(iter(iter_answer_batches(lm, bench, args.rows)))
    model, layer, k = lm.model, args.layer, args.stack
    with recording(model, [layer], stop=False) as rec, torch.no_grad():
        clean = batch.run(model)
    resid, valid = rec[layer], batch.mask.bool()
    print(
        f"{enc.name}: {batch.ids.shape[0]} answer rows x {batch.ids.shape[1]} tokens, context "
        f"{batch.context.mask.shape[1]} tokens, {k} copies, from block {layer + 1}"
    )
    a = stacked_logits(model, layer, batch, resid, k)
    b = packed_logits(model, layer, batch, resid, k)
    for i in range(k):
        da = (a[i] - clean)[valid].abs().max().item()
        db = (b[i] - clean)[valid].abs().max().item()
        print(f"copy {i}: max |logit - clean| stacked {da:.2e}, packed {db:.2e}")
    for _ in range(args.pairs):
        t0 = time.perf_counter()
        stacked_logits(model, layer, batch, resid, k)
        t1 = time.perf_counter()
        packed_logits(model, layer, batch, resid, k)
        t2 = time.perf_counter()
        print(
            f"stacked {(t1 - t0) * 1e3:7.1f} ms   packed {(t2 - t1) * 1e3:7.1f} ms   "
            f"packed/stacked {(t2 - t1) / (t1 - t0):.2f}x"
        )


if __name__ == "__main__":
    main()
