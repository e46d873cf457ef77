"""Which examples share a batch (scoring/batching.py), and the clean rows rescored one
example a pass (score_conditions(alone=True)): other groupings, the same scores."""

import contextlib

import pytest
import torch

from sae_reasoning.scoring import (
    ALONE,
    EncodedExample,
    Scorer,
    encode_prompts,
    iter_answer_batches,
)
from sae_reasoning.scoring.batching import _padded, batches
from tests.prompts_fixture import tiny_prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LAYER = 1


def example(row: int, question: int, answers: list[int]) -> EncodedExample:
    return EncodedExample(
        row=row,
        id=f"e{row}",
        benchmark="b",
        split="heldout",
        question=list(range(question)),
        answers=[list(range(n)) for n in answers],
        gold=0,
        is_choice=len(answers) > 1,
        chance=0.1,
    )


# answer lengths 1..4 spread over question lengths, so the two groupings disagree
EXAMPLES = [example(i, 5 + (7 * i) % 11, [1 + (i * 3) % 4]) for i in range(23)]


def rows(chunks):
    return sorted(e.row for c in chunks for e in c)


def test_one_answer_pass_groups_by_question_length():
    chunks = batches(EXAMPLES, 4, answer_passes=1)
    assert rows(chunks) == list(range(23))
    assert [len(c) for c in chunks] == [4, 4, 4, 4, 4, 3]
    lengths = [len(e.question) for c in chunks for e in c]
    assert lengths == sorted(lengths)


def test_many_answer_passes_group_by_answer_length_and_pad_least():
    by_question = batches(EXAMPLES, 4, answer_passes=1)
    chunks = batches(EXAMPLES, 4, answer_passes=100)
    assert rows(chunks) == list(range(23))  # every example once
    assert all(len(c) <= 4 for c in chunks)
    # one answer-row length per batch: the answer rows carry no padding
    assert all(len({len(e.answers[0]) for e in c}) == 1 for c in chunks)
    assert _padded(chunks, 100, 1) < _padded(by_question, 100, 1)
    # ... but more question padding, which a few answer passes do not repay
    assert _padded(chunks, 0, 1) > _padded(by_question, 0, 1)


def test_the_grouping_taken_is_never_the_costlier():
    for passes in (1, 2, 3, 5, 20, 100):
        chosen = batches(EXAMPLES, 4, answer_passes=passes)
        other = [batches(EXAMPLES, 4, answer_passes=p) for p in (1, 100)]
        assert _padded(chosen, passes, 1) == min(_padded(c, passes, 1) for c in other)
    # every condition also rebuilding the question contexts (positions="all"): by question
    assert batches(EXAMPLES, 4, 100, question_passes=100) == batches(EXAMPLES, 4, 1)


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch size 0"):
        batches(EXAMPLES, 0)


def noop(_batch, _segment):
    return contextlib.nullcontext()


def test_a_sweep_batched_by_answer_length_scores_as_the_baseline(tiny_lms):
    lm = tiny_lms["llama"]
    enc = encode_prompts(lm.tokenizer, tiny_prompts(n_open=24, n_choice=16))
    conds = {f"noop{i}": noop for i in range(30)}

    def grouping(passes):
        return [
            [e.row for e in b.examples] for b in iter_answer_batches(lm, enc, 3, None, None, passes)
        ]

    assert grouping(len(conds) + 1) != grouping(1)  # the sweep's batches really differ
    scorer = Scorer(lm, LAYER, batch_size=3)
    swept = scorer.score(enc, conds, progress=None)
    base = scorer.baseline(enc, progress=None)
    for name in ("clean", "noop0", "noop29"):
        df = swept[name]
        assert df["row"].tolist() == base["row"].tolist()
        assert df["correct"].tolist() == base["correct"].tolist()
        torch.testing.assert_close(
            torch.tensor(df["gold_logprob"].to_numpy()),
            torch.tensor(base["gold_logprob"].to_numpy()),
            atol=1e-5,
            rtol=0,
        )


@pytest.mark.parametrize("layer,positions", [(LAYER, "answer"), (LAYER, "all"), (None, "answer")])
def test_the_clean_rows_one_example_a_pass_score_as_clean(tiny_lms, layer, positions):
    lm = tiny_lms["gpt2"]
    enc = encode_prompts(lm.tokenizer, tiny_prompts(n_open=7, n_choice=5))
    scorer = Scorer(lm, layer, positions=positions, batch_size=4)
    with_alone = scorer.score(enc, {"noop": noop}, progress=None, alone=True)
    assert list(with_alone) == ["clean", "noop", ALONE]
    assert ALONE not in scorer.score(enc, {"noop": noop}, progress=None)
    clean, alone = with_alone["clean"], with_alone[ALONE]
    assert alone["row"].tolist() == clean["row"].tolist()
    for col in ("correct", "predicted_choice", "n_answer_tokens"):
        assert alone[col].tolist() == clean[col].tolist()
    for col in ("gold_logprob", "logit_diff"):
        torch.testing.assert_close(
            torch.tensor(alone[col].to_numpy()),
            torch.tensor(clean[col].to_numpy()),
            atol=1e-5,
            rtol=0,
            equal_nan=True,
        )


def test_batches_built_once_serve_several_sweeps(tiny_lms):
    lm = tiny_lms["llama"]
    enc = encode_prompts(lm.tokenizer, tiny_prompts(n_open=9, n_choice=6))
    scorer = Scorer(lm, LAYER, batch_size=4)
    conds = {f"noop{i}": noop for i in range(3)}
    fresh = scorer.score(enc, conds, progress=None)
    built = scorer.batches(enc, answer_passes=len(conds) + 1)
    calls = []
    handle = lm.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        again = [scorer.score(enc, conds, progress=None, batches=built) for _ in range(2)]
    finally:
        handle.remove()
    # no context is rebuilt: per batch and sweep one answer pass per condition, and the
    # clean one at the first sweep only (the batches keep it)
    assert len(calls) == len(built) * (2 * len(conds) + 1)
    for out in again:
        assert list(out) == list(fresh)
        for name in fresh:
            assert out[name]["row"].tolist() == fresh[name]["row"].tolist()
            assert out[name]["correct"].tolist() == fresh[name]["correct"].tolist()
            torch.testing.assert_close(
                torch.tensor(out[name]["gold_logprob"].to_numpy()),
                torch.tensor(fresh[name]["gold_logprob"].to_numpy()),
                atol=1e-5,
                rtol=0,
            )
