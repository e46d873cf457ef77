"""Prompts as token lists: each benchmark's shared few-shot block, questions, answer candidates."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd
import torch

from sae_reasoning.models.loading import LanguageModel


@dataclass
class EncodedExample:
    row: int  # position in the prompts table
    id: str
    benchmark: str
    split: str
    question: list[int]  # the example's own prompt tokens (after the shared block)
    answers: list[list[int]]  # open: [gold answer]; choice: one token list per choice
    gold: int  # index of the gold answer in `answers`
    is_choice: bool
    chance: float


@dataclass
class EncodedBenchmark:
    name: str
    prefix: list[int]  # shared few-shot block (with BOS where the tokenizer adds one)
    examples: list[EncodedExample] = field(default_factory=list)


def shared_prefix(texts: list[str]) -> str:
    """The few-shot block every prompt of a benchmark starts with, cut at a blank line."""
    if not texts:
        return ""
    common = os.path.commonprefix(texts) if len(texts) > 1 else texts[0]
    # Never swallow an example's own question: cut at the last blank line before it ends.
    cut = common.rfind("\n\n", 0, min(len(t) for t in texts) - 1)
    return common[: cut + 2] if cut >= 0 else ""


def encode_prompts(tokenizer, prompts: pd.DataFrame) -> list[EncodedBenchmark]:
    """Tokenize a prompts table into shared blocks, questions and answer candidates."""
    required = {"id", "benchmark", "prompt", "target", "answer_type"}
    missing = required - set(prompts.columns)
    if missing:
        raise ValueError(f"prompts table lacks columns {sorted(missing)}")
    if len(prompts) == 0:
        raise ValueError("prompts table is empty: nothing to score or capture")
    out = []
    prompts = prompts.reset_index(drop=True)
    for name, group in prompts.groupby("benchmark", sort=False):
        prefix = shared_prefix(group["prompt"].tolist())
        bench = EncodedBenchmark(name, prefix_ids(tokenizer, prefix))
        for row, rec in group.iterrows():
            bench.examples.append(_encode_example(tokenizer, row, rec, prefix, str(name)))
        out.append(bench)
    return out


def _encode_example(tokenizer, row, rec, prefix: str, benchmark: str) -> EncodedExample:
    question = tokenizer(rec["prompt"][len(prefix) :], add_special_tokens=False)["input_ids"]
    if not question:
        raise ValueError(f"prompts row {row} ({rec['id']}): empty question after the shared block")
    is_choice = rec["answer_type"] == "choice"
    if is_choice:
        targets = list(rec["choice_targets"])
        if rec["target"] not in targets:
            raise ValueError(
                f"prompts row {row} ({rec['id']}): target {rec['target']!r} "
                f"is not one of its choice_targets {targets}"
            )
        gold = targets.index(rec["target"])
    else:
        targets, gold = [rec["target"]], 0
    answers = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in targets]
    return EncodedExample(
        row=int(row),
        id=str(rec["id"]),
        benchmark=benchmark,
        split=str(rec.get("split", "")),
        question=question,
        answers=answers,
        gold=gold,
        is_choice=is_choice,
        chance=float(rec.get("chance", 1.0 / len(targets) if is_choice else 0.0)),
    )


def prefix_ids(tokenizer, prefix: str) -> list[int]:
    """The shared block's tokens; with no block, whatever the tokenizer starts with (BOS)."""
    return list(
        tokenizer(prefix)["input_ids"]
        if prefix
        else tokenizer("", add_special_tokens=True)["input_ids"]
    )


def context_window(config) -> int | None:
    """The model's context length in tokens (None if its config does not say)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_lengths(lm: LanguageModel, benchmarks: list[EncodedBenchmark]) -> None:
    """Every prompt + answer fits the model's context window (named if not), before any work."""
    limit = context_window(lm.model.config)
    if not limit:
        return
    for bench in benchmarks:
        for ex in bench.examples:
            n = len(bench.prefix) + len(ex.question) + max(len(a) for a in ex.answers) + 1
            if n > limit:
                raise ValueError(
                    f"{lm.name}: prompt {ex.id} ({bench.name}) is {n} tokens with its answer, "
                    f"over the model's context of {limit}; use fewer shots or shorter questions"
                )


def stop_token_ids(tokenizer) -> torch.Tensor:
    """Tokens that end an answer line: anything starting with a line break, and EOS.

    Kept on the tokenizer: decoding the whole vocabulary takes seconds, and causal scoring
    asks once per score_conditions call."""
    key = (len(tokenizer), tokenizer.eos_token_id)
    cached = getattr(tokenizer, "_sae_stop_token_ids", None)
    if cached is not None and cached[0] == key:
        return cached[1].clone()
    ids = _stop_token_ids(tokenizer)
    tokenizer._sae_stop_token_ids = (key, ids)
    return ids.clone()


def _stop_token_ids(tokenizer) -> torch.Tensor:
    vocab = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab)])
    ids = [i for i, t in enumerate(texts) if t.startswith("\n")]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(sorted(set(ids)), dtype=torch.long)


def pad_right(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)
