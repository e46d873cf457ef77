import random

import pytest

from sae_reasoning.activations.batching import padding_fraction, plan_batches


def test_batches_respect_the_budget_cover_every_sequence_once_and_pad_little():
    rng = random.Random(0)
    lengths = [rng.randint(20, 300) for _ in range(1000)]
    plan = plan_batches(lengths, batch_tokens=4096)
    seen = sorted(i for b in plan for i in b.items)
    assert seen == list(range(len(lengths)))
    assert all(b.padded_tokens <= 4096 for b in plan)
    assert all(b.width == max(lengths[i] for i in b.items) for b in plan)
    assert sum(b.tokens for b in plan) == sum(lengths)
    # Fixed-count batches in the given (unsorted) order waste far more.
    fixed = [lengths[i : i + 16] for i in range(0, len(lengths), 16)]
    fixed_padding = 1 - sum(lengths) / sum(len(c) * max(c) for c in fixed)
    assert padding_fraction(plan) < 0.05 and fixed_padding > 0.3


def test_plan_is_deterministic_and_an_oversized_sequence_runs_alone():
    lengths = [5, 50, 5, 5, 7]
    plan = plan_batches(lengths, batch_tokens=20)
    assert plan == plan_batches(lengths, batch_tokens=20)
    assert [b.items for b in plan] == [(0, 2, 3), (4,), (1,)]
    assert plan[-1].padded_tokens == 50


def test_bad_budget_is_named():
    with pytest.raises(ValueError, match="batch_tokens"):
        plan_batches([3, 4], batch_tokens=0)


def test_a_shared_context_counts_against_the_budget_of_every_row():
    lengths = [10] * 12
    assert [len(b.items) for b in plan_batches(lengths, batch_tokens=60)] == [6, 6]
    # Each row also attends to a cached 20-token block: 60 // (20 + 10) = 2 rows a batch.
    assert [len(b.items) for b in plan_batches(lengths, batch_tokens=60, context=20)] == [2] * 6
