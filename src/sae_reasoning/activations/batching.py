"""Length-aware batches under a token budget.

Sequences are sorted by length and packed greedily so that rows x padded width stays
within `batch_tokens`: short prompts travel in big batches, long ones in small ones, and
padding stays a few percent. The plan is a pure function of the lengths and the budget,
so a resumed capture rebuilds exactly the batches of the interrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Batch:
    items: tuple[int, ...]  # indices into the input sequence list, shortest first
    width: int  # padded length
    tokens: int  # real tokens in the batch

    @property
    def padded_tokens(self) -> int:
        return len(self.items) * self.width


def plan_batches(
    lengths: list[int], batch_tokens: int, max_rows: int | None = None, context: int = 0
) -> list[Batch]:
    """Sorted, greedily packed batches with len(rows) * (context + width) <= batch_tokens.

    `context`: tokens of a cached shared block every row attends to (the few-shot prompt).
    Its keys and values are repeated per row, so it weighs on a batch like its own tokens:
    measured on SmolLM2 with a ~700-token block, counting it ran capture 1.5x faster than a
    budget on the new tokens alone. A sequence over the budget gets a batch of its own.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be a positive number of tokens, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[Batch] = []
    rows: list[int] = []
    for i in order:
        width = lengths[i]  # sorted ascending: the newest row is the widest
        full = (len(rows) + 1) * (context + width) > batch_tokens or (
            max_rows is not None and len(rows) >= max_rows
        )
        if rows and full:
            batches.append(_batch(rows, lengths))
            rows = []
        rows.append(i)
    if rows:
        batches.append(_batch(rows, lengths))
    return batches


def _batch(rows: list[int], lengths: list[int]) -> Batch:
    return Batch(tuple(rows), max(lengths[i] for i in rows), sum(lengths[i] for i in rows))


def padding_fraction(batches: list[Batch]) -> float:
    padded = sum(b.padded_tokens for b in batches)
    return 1 - sum(b.tokens for b in batches) / padded if padded else 0.0
