"""The tokens capture reads, packed flat: one int32 array per benchmark plus offsets.

Capture needs each example's question and gold answer only, tokenised exactly as
scoring.encode_prompts does (the shared few-shot block split off, no special tokens
inside; the gold answer is the target string either way). Python lists of token ids cost
~40 bytes a token; this packing costs 4, so memory stays flat as prompt tables grow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from sae_reasoning.scoring import context_window, prefix_ids, shared_prefix

CHUNK = 256  # prompts per tokenizer call (bounds the transient Python lists)


@dataclass
class PackedBenchmark:
    name: str
    prefix: list[int]  # shared few-shot block (run once, cached, not stored)
    rows: np.ndarray  # [n] row of each example in the prompts table
    ids: np.ndarray  # all sequences (question + gold answer) back to back, int32
    offsets: np.ndarray  # [n + 1] sequence i is ids[offsets[i]:offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, items, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and mask for the given sequences."""
        lengths = self.lengths[list(items)]
        ids = torch.full((len(items), int(lengths.max())), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(items):
            seq = torch.from_numpy(self.ids[self.offsets[i] : self.offsets[i + 1]])
            ids[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1
        return ids.to(device), mask.to(device)


def pack_prompts(
    tokenizer, prompts: pd.DataFrame, benchmarks: list[str] | None = None
) -> list[PackedBenchmark]:
    prompts = prompts.reset_index(drop=True)
    out = []
    for name, group in prompts.groupby("benchmark", sort=False):
        if benchmarks is not None and name not in benchmarks:
            continue
        texts = group["prompt"].tolist()
        prefix = shared_prefix(texts)
        parts, lengths = [], []
        for start in range(0, len(group), CHUNK):
            chunk = group.iloc[start : start + CHUNK]
            questions = tokenizer(
                [t[len(prefix) :] for t in chunk["prompt"]], add_special_tokens=False
            )["input_ids"]
            answers = tokenizer(chunk["target"].tolist(), add_special_tokens=False)["input_ids"]
            for row, q in zip(chunk.index, questions):
                if not q:
                    raise ValueError(
                        f"prompts row {row} ({prompts.at[row, 'id']}): empty question after "
                        "the shared block"
                    )
            # One compact array per chunk: at most one chunk of Python lists is alive at a time.
            parts.append(
                np.fromiter(
                    (t for q, a in zip(questions, answers) for t in (*q, *a)), dtype=np.int32
                )
            )
            lengths.extend(len(q) + len(a) for q, a in zip(questions, answers))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        out.append(
            PackedBenchmark(
                str(name),
                prefix_ids(tokenizer, prefix),
                group.index.to_numpy(np.int64),
                np.concatenate(parts) if parts else np.zeros(0, np.int32),
                offsets,
            )
        )
    return out


def check_context(
    model_name: str, config, benchmarks: list[PackedBenchmark], prompts: pd.DataFrame
) -> None:
    """Every prefix + sequence fits the context window; the longest offender is named."""
    limit = context_window(config)
    if not limit:
        return
    for b in benchmarks:
        total = len(b.prefix) + b.lengths
        worst = int(np.argmax(total)) if len(total) else 0
        if len(total) and total[worst] > limit:
            row = int(b.rows[worst])
            raise ValueError(
                f"{model_name}: prompt {prompts.iloc[row]['id']} ({b.name}) is {int(total[worst])} "
                f"tokens with its answer, over the model's context of {limit}; use fewer shots "
                "or shorter questions"
            )
