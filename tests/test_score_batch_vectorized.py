"""score_batch scores all examples of a batch with batched tensor ops: the same table as the
per-example loop it replaced (kept here verbatim as the reference)."""

import pandas as pd
import pytest
import torch

from sae_reasoning.scoring import (
    AnswerBatch,
    EncodedExample,
    answer_logprobs,
    encode_prompts,
    iter_answer_batches,
    pad_right,
    score_batch,
    stop_token_ids,
)
from tests.prompts_fixture import tiny_prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EXACT = ["row", "id", "benchmark", "split", "gold_logprob", "logit_diff", "n_answer_tokens"]
EXACT += ["correct", "predicted_choice", "chance"]


# --- The per-example implementation score_batch had before (verbatim). ---


def old_answer_logprobs(batch: AnswerBatch, logits: torch.Tensor):
    """Per answer row: summed gold-token log-probs, all-argmax flag, log-softmax at positions.

    Position j of an answer row predicts answer token j; position len(answer) predicts what
    follows the answer (a line break, for a greedy exact match).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    tokens = batch.ids[:, 1:]
    tok_lp = logp[:, :-1].gather(-1, tokens[..., None])[..., 0]  # [R, S-1]
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None]
    in_answer = pos < batch.answer_len[:, None]
    summed = (tok_lp * in_answer).sum(1)
    argmax_ok = ((logp[:, :-1].argmax(-1) == tokens) | ~in_answer).all(1)
    return logp, summed, argmax_ok


def old_score_batch(
    batch: AnswerBatch,
    logits: torch.Tensor,
    stop_ids: torch.Tensor,
    clean_logp: torch.Tensor | None = None,
) -> tuple[pd.DataFrame, torch.Tensor]:
    """(one row of scores per example, the answer rows' log-softmax: the clean one for `kl`)."""
    logp, summed, argmax_ok = old_answer_logprobs(batch, logits)
    rows = []
    r = 0
    for ex in batch.examples:
        rows.append(_example_row(batch, ex, r, logp, summed, argmax_ok, stop_ids, clean_logp))
        r += len(ex.answers)
    return pd.DataFrame(rows), logp


def _example_row(batch, ex, r, logp, summed, argmax_ok, stop_ids, clean_logp) -> dict:
    """The scores of the example whose answer rows start at row `r`."""
    n = len(ex.answers)
    gold_row = r + ex.gold
    logit_diff = float("nan")
    if ex.is_choice:
        predicted = int(summed[r : r + n].argmax())
        correct = predicted == ex.gold
        # Gold choice against the best other choice (summed log-probs; for one-token
        # choices this is the logit difference, the softmax normaliser cancels).
        others = torch.cat([summed[r:gold_row], summed[gold_row + 1 : r + n]])
        if len(others):
            logit_diff = float(summed[gold_row] - others.max())
    else:
        end = int(batch.answer_len[gold_row])
        stop = logp[gold_row, end].argmax()
        predicted = None
        correct = bool(argmax_ok[gold_row]) and bool(torch.isin(stop, stop_ids.to(stop.device)))
    kl = 0.0
    if clean_logp is not None:
        end = int(batch.answer_len[gold_row]) + 1
        p = clean_logp[gold_row, :end]
        q = logp[gold_row, :end]
        # KL >= 0; float32 sums over the vocabulary can land a rounding error below it
        kl = max(0.0, float((p.exp() * (p - q)).sum(-1).mean()))
    return {
        "row": ex.row,
        "id": ex.id,
        "benchmark": ex.benchmark,
        "split": ex.split,
        "gold_logprob": float(summed[gold_row]),
        "logit_diff": logit_diff,
        "n_answer_tokens": len(ex.answers[ex.gold]),
        "correct": bool(correct),
        "predicted_choice": predicted,
        "chance": ex.chance,
        "kl": kl,
    }


# --- Checks ---


def assert_same_scores(batch, logits, stop_ids, clean_logp=None):
    """The new table equals the old one: exactly, but KL to 1e-6; answer_logprobs and the
    log-softmax are bit-identical."""
    for new, old in zip(answer_logprobs(batch, logits), old_answer_logprobs(batch, logits)):
        torch.testing.assert_close(new, old, rtol=0, atol=0, equal_nan=True)
    want, want_logp = old_score_batch(batch, logits, stop_ids, clean_logp)
    got, got_logp = score_batch(batch, logits, stop_ids, clean_logp)
    torch.testing.assert_close(got_logp, want_logp, rtol=0, atol=0, equal_nan=True)
    pd.testing.assert_frame_equal(got, want, check_exact=False, atol=1e-6, rtol=0)
    pd.testing.assert_frame_equal(got[EXACT], want[EXACT], check_exact=True)
    return got


def boosted(batch, logits, stop_ids, every=2):
    """`logits` with the gold answer (and, for open answers, a stop token after it) made the
    argmax on every `every`-th example, and its first token the least likely on the others:
    those are correct, the others not (but a choice question with a single choice)."""
    out = logits.clone()
    rows = batch.gold_rows().nonzero()[:, 0].tolist()
    for k, r in enumerate(rows):
        if k % every:
            out[r, 0, batch.ids[r, 1]] -= 50.0
            continue
        n = int(batch.answer_len[r])
        for j in range(n):
            out[r, j, batch.ids[r, j + 1]] += 50.0
        out[r, n, stop_ids[0]] += 50.0
    return out


def tiny_batches(lm, prompts, batch_size=4):
    return list(iter_answer_batches(lm, encode_prompts(lm.tokenizer, prompts), batch_size))


def mixed_prompts():
    """Open and choice examples in one benchmark: batches that mix the two."""
    return tiny_prompts(n_open=3, n_choice=4).assign(benchmark="mixed")


@pytest.mark.parametrize("kind", ["open", "choice", "mixed"])
def test_tiny_model_scores_equal_the_per_example_loop(tiny_lms, kind):
    lm = tiny_lms["llama"]
    stop_ids = stop_token_ids(lm.tokenizer)
    prompts = {
        "open": tiny_prompts(n_open=6, n_choice=0),
        "choice": tiny_prompts(n_open=0, n_choice=6),
        "mixed": mixed_prompts(),
    }[kind]
    # mixed: all 7 examples (3 open, 4 choice) in one batch
    batches = tiny_batches(lm, prompts, batch_size=len(prompts) if kind == "mixed" else 4)
    kinds = {tuple(sorted({e.is_choice for e in b.examples})) for b in batches}
    assert kinds >= {"open": {(False,)}, "choice": {(True,)}, "mixed": {(False, True)}}[kind]
    gen = torch.Generator().manual_seed(0)
    correct = []
    for batch in batches:
        with torch.no_grad():
            clean = batch.run(lm.model)
        clean_df = assert_same_scores(batch, clean, stop_ids)
        assert (clean_df.kl == 0).all()
        correct += clean_df.correct.tolist()
        _, clean_logp = score_batch(batch, clean, stop_ids)
        noisy = clean + 0.5 * torch.randn(clean.shape, generator=gen)
        df = assert_same_scores(batch, noisy, stop_ids, clean_logp)
        assert (df.kl > 1e-3).all()
        correct += df.correct.tolist()
        right = boosted(batch, clean, stop_ids)
        correct += assert_same_scores(batch, right, stop_ids, clean_logp).correct.tolist()
    assert any(correct) and not all(correct)


def synthetic_batch(examples: list[tuple], last_token=3) -> AnswerBatch:
    """A batch of (answers, gold[, is_choice]) examples, with no model behind it; by default
    choice questions where there are several answers."""
    exs = [
        EncodedExample(
            row=10 + i,
            id=f"ex-{i}",
            benchmark="synthetic",
            split="select",
            question=[last_token],
            answers=answers,
            gold=gold,
            is_choice=len(answers) > 1 if len(rest) == 0 else rest[0],
            chance=1 / len(answers) if len(answers) > 1 else 0.0,
        )
        for i, (answers, gold, *rest) in enumerate(examples)
    ]
    pairs = [(i, j) for i, e in enumerate(exs) for j in range(len(e.answers))]
    ids, mask = pad_right([[last_token] + exs[i].answers[j] for i, j in pairs], 0, "cpu")
    return AnswerBatch(
        index=0,
        examples=exs,
        context=None,
        pair_example=torch.tensor([i for i, _ in pairs]),
        pair_answer=torch.tensor([j for _, j in pairs]),
        ids=ids,
        mask=mask,
        answer_len=torch.tensor([len(exs[i].answers[j]) for i, j in pairs]),
    )


def test_variable_choices_ties_single_answers_and_correctness():
    """Examples with 1..4 answers of several lengths, tied choices (the first wins, as in the
    loop), and gold answers made the argmax on some examples only."""
    stop_ids = torch.tensor([7, 9])
    batch = synthetic_batch(
        [
            ([[11, 12, 13]], 0),  # open, three tokens
            ([[20], [21]], 1),
            ([[22, 23], [24], [25, 26, 27]], 2),
            ([[30], [30], [31]], 1),  # rows 6-8
            ([[14]], 0),
            ([[32], [33], [34], [35]], 0),
            ([[15, 16]], 0),
            ([[40]], 0, True),  # a choice question with one choice: no logit difference
        ]
    )
    gen = torch.Generator().manual_seed(1)
    R, S, V = len(batch.pair_example), batch.ids.shape[1], 48
    clean = torch.randn(R, S, V, generator=gen)
    _, clean_logp = score_batch(batch, clean, stop_ids)
    for every in (1, 2, 3):
        logits = boosted(batch, clean + torch.randn(R, S, V, generator=gen), stop_ids, every)
        df = assert_same_scores(batch, logits, stop_ids, clean_logp)
        assert df.logit_diff.isna().tolist() == [True, False, False, False, True, False, True, True]
        assert df.correct.tolist() == [k % every == 0 or k == 7 for k in range(8)]
    # Tied best choices (rows 6 and 7 given the gold row's logits): the first is predicted,
    # as in the loop.
    tied = boosted(batch, clean, stop_ids, 1)
    tied[6] = tied[7]
    df = assert_same_scores(batch, tied, stop_ids, clean_logp)
    assert df.predicted_choice.iloc[3] == 0 and not df.correct.iloc[3]
    # An open answer whose gold tokens all win but whose next token is no stop: not correct.
    wrong_stop = boosted(batch, clean, stop_ids, 1)
    wrong_stop[0, 3, stop_ids] -= 200.0
    assert not assert_same_scores(batch, wrong_stop, stop_ids).correct.iloc[0]
    # ...nor one whose stop wins after the answer but whose second gold token does not.
    wrong_token = boosted(batch, clean, stop_ids, 1)
    wrong_token[0, 1, batch.ids[0, 2]] -= 200.0
    assert not assert_same_scores(batch, wrong_token, stop_ids).correct.iloc[0]


def test_kl_clips_rounding_below_zero_and_nan_as_before():
    """KL of a condition equal to clean is 0 (rounding can land below it); a NaN KL is 0, as
    max(0.0, nan) made it."""
    stop_ids = torch.tensor([7])
    batch = synthetic_batch([([[11, 12]], 0), ([[20], [21]], 0), ([[13]], 0)])
    gen = torch.Generator().manual_seed(2)
    logits = 30 * torch.randn(len(batch.pair_example), batch.ids.shape[1], 64, generator=gen)
    _, clean_logp = score_batch(batch, logits, stop_ids)
    df = assert_same_scores(batch, logits, stop_ids, clean_logp)
    assert (df.kl == 0).all()
    noisy = logits + torch.randn(logits.shape, generator=gen)
    noisy[3, 0, 5] = float("nan")  # the third example's gold row
    df = assert_same_scores(batch, noisy, stop_ids, clean_logp)
    assert df.kl.iloc[2] == 0 and df.kl.iloc[0] > 0


def test_tied_logits_pick_the_first_token_as_argmax_did():
    """Whole-number logits: the vocabulary is full of ties (and a NaN), where the first
    maximum is the argmax; gold tokens tied with earlier ones are no exact match."""
    stop_ids = torch.tensor([1, 2])
    batch = synthetic_batch([([[3, 4]], 0), ([[5], [0]], 1), ([[6, 2, 7]], 0), ([[4]], 0)])
    gen = torch.Generator().manual_seed(3)
    shape = (len(batch.pair_example), batch.ids.shape[1], 12)
    for trial in range(20):
        logits = torch.randint(0, 3, shape, generator=gen).float()
        if trial % 4 == 0:
            logits[trial % shape[0], trial % shape[1], trial % shape[2]] = float("nan")
        assert_same_scores(batch, logits, stop_ids)
