"""From an answer pass's logits to each example's scores (the columns: scoring/__init__.py)."""

from __future__ import annotations

import pandas as pd
import torch

from sae_reasoning.models.cached_forward import forward, keep_rows, with_room
from sae_reasoning.models.loading import LanguageModel
from sae_reasoning.scoring.passes import AnswerBatch


def answer_logprobs(batch: AnswerBatch, logits: torch.Tensor):
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


def score_batch(
    batch: AnswerBatch,
    logits: torch.Tensor,
    stop_ids: torch.Tensor,
    clean_logp: torch.Tensor | None = None,
) -> tuple[pd.DataFrame, torch.Tensor]:
    """(one row of scores per example, the answer rows' log-softmax: the clean one for `kl`)."""
    logp, summed, argmax_ok = answer_logprobs(batch, logits)
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


def greedy_continuations(
    lm: LanguageModel, batch: AnswerBatch, stop_ids: torch.Tensor, max_new_tokens: int = 12
) -> list[str]:
    """What the model actually writes after each prompt of the batch (greedy, one line)."""
    examples = batch.examples
    # Room for every step: each one then appends its keys/values instead of copying the
    # whole cache (the same values, so the same tokens).
    ctx = with_room(batch.context, max_new_tokens) if batch.context is not None else None
    n, pad = len(examples), lm.tokenizer.pad_token_id
    nxt = torch.tensor([[e.question[-1]] for e in examples], device=lm.device)
    out = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=lm.device)
    active = torch.arange(n, device=lm.device)  # the rows of ctx, as rows of `out`
    done = torch.zeros(n, dtype=torch.bool, device=lm.device)  # of the active rows
    stop_ids = stop_ids.to(lm.device)
    with torch.no_grad():
        for step in range(max_new_tokens):
            res, ctx = forward(
                lm.model, nxt, torch.ones_like(nxt), ctx, keep=True, in_place=ctx is not None
            )
            nxt = res.logits[:, -1].argmax(-1, keepdim=True)
            done |= torch.isin(nxt[:, 0], stop_ids)
            out[active[~done], step] = nxt[~done, 0]
            if done.all():
                break
            if ctx is not None and 2 * int((~done).sum()) <= len(done):
                # Most rows have ended their line: go on with the others only. A step costs
                # ~3 ms per row here (attention reads the row's whole cache, and GQA models
                # copy it per head group), against one copy of the rows kept.
                keep = (~done).nonzero()[:, 0]
                ctx, nxt, active, done = keep_rows(ctx, keep), nxt[keep], active[keep], done[keep]
    texts = [lm.tokenizer.decode([t for t in toks if t != pad]) for toks in out.tolist()]
    return [t.split("\n")[0].strip() for t in texts]
