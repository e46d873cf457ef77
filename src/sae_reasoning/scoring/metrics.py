"""From an answer pass's logits to each example's scores (the columns: scoring/__init__.py)."""

from __future__ import annotations

from itertools import accumulate

import pandas as pd
import torch

from sae_reasoning.scoring.passes import AnswerBatch


def answer_logprobs(batch: AnswerBatch, logits: torch.Tensor):
    """Per answer row: summed gold-token log-probs, all-argmax flag, log-softmax at positions.

    Position j of an answer row predicts answer token j; position len(answer) predicts what
    follows the answer (a line break, for a greedy exact match).
    """
    logp, summed, argmax_ok, _ = _answer_logprobs(batch, logits)
    return logp, summed, argmax_ok


def _answer_logprobs(batch: AnswerBatch, logits: torch.Tensor):
    """answer_logprobs, and the argmax token at every position [R, S]: score_batch's stop
    check reads it after each answer."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    tokens = batch.ids[:, 1:]
    tok_lp = logp[:, :-1].gather(-1, tokens[..., None])[..., 0]  # [R, S-1]
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None]
    in_answer = pos < batch.answer_len[:, None]
    summed = (tok_lp * in_answer).sum(1)
    # max's indices are argmax's (the first maximum, or the first NaN) at twice its speed on CPU
    best = logp.detach().max(-1).indices
    argmax_ok = ((best[:, :-1] == tokens) | ~in_answer).all(1)
    return logp, summed, argmax_ok, best


def score_batch(
    batch: AnswerBatch,
    logits: torch.Tensor,
    stop_ids: torch.Tensor,
    clean_logp: torch.Tensor | None = None,
) -> tuple[pd.DataFrame, torch.Tensor]:
    """(one row of scores per example, the answer rows' log-softmax: the clean one for `kl`).

    All examples at once, and one transfer to the host: a sweep calls this per batch and
    condition, and per-example ops, each with a device sync, cost more than the scores."""
    logp, summed, argmax_ok, best = _answer_logprobs(batch, logits)
    exs = batch.examples
    starts = accumulate((len(e.answers) for e in exs), initial=0)  # rows are per example
    gold_rows = [r + e.gold for r, e in zip(starts, exs)]
    ends = [len(e.answers[e.gold]) for e in exs]  # the position after the gold answer
    meta = torch.tensor(  # one copy to the device
        [(r, n, e.gold, e.is_choice, len(e.answers)) for r, n, e in zip(gold_rows, ends, exs)],
        device=best.device,
    )
    rows, end, gold, is_choice, n_answers = meta.T
    is_choice = is_choice.bool()
    predicted, logit_diff = _choices(batch, summed, gold, rows)
    # Open answers: greedy decoding writes every gold token, then a stop token (a line break).
    said = argmax_ok[rows] & torch.isin(best[rows, end], stop_ids.to(best.device))
    correct = torch.where(is_choice, predicted == gold, said)
    logit_diff = torch.where(is_choice & (n_answers > 1), logit_diff, float("nan"))
    kl = torch.zeros_like(logit_diff)
    if clean_logp is not None:
        kl = _kl(clean_logp, logp, gold_rows, ends)
    # One transfer to the host; bools and choice indices are exact in float32.
    cols = torch.stack([summed[rows], logit_diff, correct.float(), predicted.float(), kl])
    return _table(exs, *cols.tolist()), logp


def _table(exs, gold_logprob, logit_diff, correct, predicted, kl) -> pd.DataFrame:
    """The batch's scores, one row per example (the columns: scoring/__init__.py)."""
    return pd.DataFrame(
        {
            "row": [e.row for e in exs],
            "id": [e.id for e in exs],
            "benchmark": [e.benchmark for e in exs],
            "split": [e.split for e in exs],
            "gold_logprob": gold_logprob,
            "logit_diff": logit_diff,
            "n_answer_tokens": [len(e.answers[e.gold]) for e in exs],
            "correct": [bool(c) for c in correct],
            "predicted_choice": [int(c) if e.is_choice else None for c, e in zip(predicted, exs)],
            "chance": [e.chance for e in exs],
            "kl": kl,
        }
    )


def _choices(batch: AnswerBatch, summed, gold, gold_rows):
    """Per example: the choice with the highest summed log-prob, and the gold choice's minus
    the best other one's (for one-token choices the logit difference: the softmax normaliser
    cancels). Meaningless for open answers and single choices; the caller masks them."""
    n = len(batch.examples)
    width = max(len(e.answers) for e in batch.examples)
    # [example, answer]; the padding (-inf, after the real answers) never wins an argmax tie
    table = summed.new_full((n, width), float("-inf"))
    table[batch.pair_example, batch.pair_answer] = summed
    predicted = table.argmax(1)
    table[torch.arange(n, device=table.device), gold] = float("-inf")
    return predicted, summed[gold_rows] - table.max(1).values


def _kl(clean_logp, logp, gold_rows: list[int], ends: list[int]) -> torch.Tensor:
    """KL(clean || condition) per example, averaged over its gold row's positions 0..end
    (the answer tokens and the stop after them).

    Row by row on views, without a sync: batched, the [E, S, V] temporaries cost more than
    the arithmetic on CPU (fresh pages faulted in for each: 8x slower, measured). The same
    float32 ops as per example before, in place where that saves a temporary."""
    views = ((clean_logp[r, : n + 1], logp[r, : n + 1]) for r, n in zip(gold_rows, ends))
    kl = torch.stack([p.exp().mul_(p - q).sum(-1).mean() for p, q in views])
    # KL >= 0; float32 sums over the vocabulary can land a rounding error below it (and a
    # NaN counts as 0, as max(0.0, nan) did)
    return torch.where(kl > 0, kl, 0.0)
