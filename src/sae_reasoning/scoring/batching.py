"""Which examples of a benchmark share a batch.

A batch runs its questions once (right-padded to its longest question) and then one
answer pass per condition (answer rows right-padded to the longest row). Padding is
compute spent on nothing, so the grouping that pads least wins:
- by question length, when the questions dominate (the baseline: one answer pass);
- by answer-row length first (a new batch whenever it changes), when many conditions rerun
  the answer rows (the causal sweep: 100+ answer passes per batch, whose rows stacking
  makes large enough to run at full rate whatever the batch size, scoring/stacked.py).
`batches` counts the padded tokens of both and takes the smaller: never worse than the one
grouping alone.
"""

from __future__ import annotations

from sae_reasoning.scoring.encoding import EncodedExample


def _row_length(e: EncodedExample) -> int:
    """Tokens of the example's longest answer row (last question token + answer)."""
    return 1 + max(len(a) for a in e.answers)


def _padded(chunks: list[list[EncodedExample]], answer_passes: int, question_passes: int) -> int:
    """Tokens the passes push through the model, padding included."""
    total = 0
    for c in chunks:
        question = len(c) * max(len(e.question) - 1 for e in c)
        rows = sum(len(e.answers) for e in c) * max(_row_length(e) for e in c)
        total += question_passes * question + answer_passes * rows
    return total


def _by_question(examples: list[EncodedExample], size: int) -> list[list[EncodedExample]]:
    order = sorted(examples, key=lambda e: len(e.question))
    return [order[i : i + size] for i in range(0, len(order), size)]


def _by_answer(examples: list[EncodedExample], size: int) -> list[list[EncodedExample]]:
    order = sorted(examples, key=lambda e: (_row_length(e), len(e.question)))
    chunks: list[list[EncodedExample]] = []
    for e in order:
        if chunks and len(chunks[-1]) < size and _row_length(chunks[-1][0]) == _row_length(e):
            chunks[-1].append(e)
        else:
            chunks.append([e])
    return chunks


def batches(
    examples: list[EncodedExample], size: int, answer_passes: int = 1, question_passes: int = 1
) -> list[list[EncodedExample]]:
    """`examples` in batches of at most `size`, grouped to pad least for `answer_passes`
    answer passes and `question_passes` question passes per batch (module docstring)."""
    if size < 1:
        raise ValueError(f"batch size {size!r}: expected >= 1")
    by_question = _by_question(examples, size)
    if answer_passes <= question_passes:
        return by_question
    by_answer = _by_answer(examples, size)
    cheaper = _padded(by_answer, answer_passes, question_passes) < _padded(
        by_question, answer_passes, question_passes
    )
    return by_answer if cheaper else by_question
