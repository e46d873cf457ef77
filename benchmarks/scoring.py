"""Baseline scoring on SmolLM2-135M before and after the scoring changes of issue 17.

Same prompts (the default study's, data/05_model_input/prompts.parquet, the first
`--per-benchmark` rows of each benchmark; 0: all of them), same batches, one run, interleaved:
  before    as on main before issue 17: greedy decoding concatenating each step's keys/values
            onto the whole cache (a copy of it per step) and running every row to the
            batch's last step; the answer pass concatenating onto the rows' context (a copy
            per pass); the stop tokens found by decoding the whole vocabulary at every
            score_conditions call
  after     scoring as it is: decoding writes into a cache with room reserved and, once most
            rows have ended their line, goes on with the others only; it starts where each
            greedy answer leaves the gold one, on the clean answer pass's keys/values
            (scoring/greedy.py); the answer pass writes into room beside the rows' context;
            stop tokens cached on the tokenizer
Scorer(lm).baseline(..., generate_tokens=12), as the score_baseline node runs it. The
score tables must be identical (asserted, exact); the fastest of `--repeats` runs counts.

    PYTHONPATH=$PWD/src .venv/bin/python benchmarks/scoring.py [--per-benchmark 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from capture import smollm2  # noqa: E402

from sae_reasoning.models import cached_forward  # noqa: E402
from sae_reasoning.models.cached_forward import forward  # noqa: E402
from sae_reasoning.scoring import Scorer, encode_prompts, passes, scorer  # noqa: E402
from sae_reasoning.scoring.encoding import _stop_token_ids  # noqa: E402


def greedy_before(lm, batch, stop_ids, max_new_tokens=12, answer_logits=None):
    """scoring.greedy.greedy_continuations as it was before issue 17 (answer_logits unused)."""
    ctx = batch.context
    n = len(batch.examples)
    nxt = torch.tensor([[e.question[-1]] for e in batch.examples], device=lm.device)
    out = torch.zeros((n, 0), dtype=torch.long, device=lm.device)
    done = torch.zeros(n, dtype=torch.bool, device=lm.device)
    stop_ids = stop_ids.to(lm.device)
    pad = lm.tokenizer.pad_token_id
    with torch.no_grad():
        for _ in range(max_new_tokens):
            res, ctx = forward(lm.model, nxt, torch.ones_like(nxt), ctx, keep=True)
            nxt = res.logits[:, -1].argmax(-1, keepdim=True)
            done |= torch.isin(nxt[:, 0], stop_ids)
            out = torch.cat([out, torch.where(done[:, None], pad, nxt)], 1)
            if done.all():
                break
    texts = [lm.tokenizer.decode([t for t in toks if t != pad]) for toks in out.tolist()]
    return [t.split("\n")[0].strip() for t in texts]


def select_before(context, rows, room=0, *, from_layer=0, copies=1):
    """The answer rows' context as before issue 17: no room, each pass concatenates."""
    return cached_forward.select(context, rows, copies=copies)


def run(lm, encoded, before: bool) -> tuple[float, pd.DataFrame]:
    patches = (
        [
            mock.patch.object(scorer, "greedy_continuations", greedy_before),
            mock.patch.object(scorer, "stop_token_ids", _stop_token_ids),
            mock.patch.object(passes, "select", select_before),
        ]
        if before
        else []
    )
    for p in patches:
        p.start()
    try:
        t0 = time.perf_counter()
        df = Scorer(lm).baseline(encoded, generate_tokens=12, progress=None)
        return time.perf_counter() - t0, df
    finally:
        for p in patches:
            p.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="data/05_model_input/prompts.parquet")
    ap.add_argument("--per-benchmark", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    prompts = pd.read_parquet(args.prompts)
    if args.per_benchmark:
        prompts = prompts.groupby("benchmark", sort=False).head(args.per_benchmark)
    lm = smollm2().load()
    encoded = encode_prompts(lm.tokenizer, prompts)
    print(f"{len(prompts)} examples, torch threads {torch.get_num_threads()}, {os.getloadavg()=}")
    best = {"before": float("inf"), "after": float("inf")}
    tables = {}
    for _ in range(args.repeats):
        for name in best:
            seconds, tables[name] = run(lm, encoded, before=name == "before")
            best[name] = min(best[name], seconds)
            print(f"  {name:6s} {seconds:7.1f} s")
    pd.testing.assert_frame_equal(tables["before"], tables["after"], check_exact=True)
    print("score tables identical (exact)")
    for name, seconds in best.items():
        print(
            f"{name:6s} best {seconds:7.1f} s  {1000 * seconds / len(prompts):6.0f} ms/example"
            f"  {best['before'] / seconds:5.2f}x"
        )


if __name__ == "__main__":
    main()
