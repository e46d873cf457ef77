"""What the model writes after each prompt: greedy decoding of one line on the cached context.

The clean answer pass has already run each example's gold answer teacher-forced
(passes.AnswerBatch.run): the argmax at each of its positions is the greedy token for as
long as the greedy answer agrees with the gold one, and one more (where it departs, or the
token after the whole gold answer). Decoding starts there, on that pass's keys/values, so
an example the model answers correctly costs no decoding step at all; the others skip the
steps that agreed. The same tokens as decoding from the question (the same argmax of the
same computation; float rounding differs with the pass's shape, as it does with batching).
"""

from __future__ import annotations

import torch

from sae_reasoning.models.cached_forward import forward, keep_rows, take_written, with_room
from sae_reasoning.models.loading import LanguageModel
from sae_reasoning.scoring.passes import AnswerBatch


def greedy_continuations(
    lm: LanguageModel,
    batch: AnswerBatch,
    stop_ids: torch.Tensor,
    max_new_tokens: int = 12,
    answer_logits: torch.Tensor | None = None,
) -> list[str]:
    """What the model actually writes after each prompt of the batch (greedy, one line).

    answer_logits: the logits of the clean `batch.run(model, spare=max_new_tokens)` just
    before, whose keys/values that pass left in `batch.rows_context(max_new_tokens)`:
    decoding goes on from where each greedy answer leaves the gold one (module docstring).
    """
    n, pad, dev = len(batch.examples), lm.tokenizer.pad_token_id, lm.device
    stop_ids = stop_ids.to(dev)
    out = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=dev)
    written = batch.rows_context(max_new_tokens) if answer_logits is not None else None
    if written is not None:
        ctx, nxt, filled, active = _from_answer_pass(batch, answer_logits, written, stop_ids, out)
    else:
        # Room for every step: each one then appends its keys/values instead of copying
        # the whole cache (the same values, so the same tokens).
        ctx = with_room(batch.context, max_new_tokens) if batch.context is not None else None
        nxt = torch.tensor([[e.question[-1]] for e in batch.examples], device=dev)
        filled = torch.zeros(n, dtype=torch.long, device=dev)
        active = torch.arange(n, device=dev)  # the rows of ctx, as rows of `out`
    _decode(lm, ctx, nxt, filled, active, stop_ids, out)
    texts = [lm.tokenizer.decode([t for t in toks if t != pad]) for toks in out.tolist()]
    return [t.split("\n")[0].strip() for t in texts]


def _decode(lm, ctx, nxt, filled, active, stop_ids, out) -> None:
    """Greedy steps for the `active` rows of `out` (each has `filled` tokens, and `nxt` to
    run next), each until a stop token or a full row: written into `out` in place."""
    cap = out.shape[1]
    done = filled >= cap
    with torch.no_grad():
        while len(active) and not bool(done.all()):
            res, ctx = forward(
                lm.model, nxt, torch.ones_like(nxt), ctx, keep=True, in_place=ctx is not None
            )
            nxt = res.logits[:, -1].argmax(-1, keepdim=True)
            done |= torch.isin(nxt[:, 0], stop_ids)
            out[active[~done], filled[~done]] = nxt[~done, 0]
            filled = filled + ~done
            done |= filled >= cap
            if ctx is not None and 2 * int((~done).sum()) <= len(done) and not bool(done.all()):
                # Most rows have ended their line: go on with the others only (attention then
                # reads fewer rows' caches, the matmuls are smaller), against one copy of the
                # rows kept.
                keep = (~done).nonzero()[:, 0]
                ctx, nxt, active = keep_rows(ctx, keep), nxt[keep], active[keep]
                filled, done = filled[keep], done[keep]


def _from_answer_pass(batch: AnswerBatch, logits, written, stop_ids, out):
    """Write into `out` the greedy tokens the clean answer pass shows: the gold answer's
    tokens while each position's argmax agrees, then that argmax (each cut at a stop token
    and at out's width). Returns the rows still to decode: (their context, on the pass's
    keys/values up to where the row agreed; the token to run next; tokens written; their
    rows of `out`)."""
    cap, dev = out.shape[1], out.device
    gold = batch.gold_rows().nonzero()[:, 0]  # each example's gold row (rows run by example)
    pred = logits[gold].argmax(-1)  # [n, S]: the greedy token after each position
    answer, lengths = batch.ids[gold, 1:], batch.answer_len[gold]
    within = torch.arange(answer.shape[1], device=dev) < lengths[:, None]
    agreed = ((pred[:, :-1] == answer) & within).int().cumprod(1).sum(1)  # [n]
    stops = set(stop_ids.tolist())
    go, nxt, filled = [], [], []
    for i, (row, m) in enumerate(zip(pred.tolist(), agreed.tolist(), strict=True)):
        known = row[: m + 1]
        ended = next((j for j, t in enumerate(known) if t in stops), None)
        known = known[: cap if ended is None else min(ended, cap)]
        out[i, : len(known)] = torch.tensor(known, dtype=out.dtype)
        if ended is None and len(known) < cap:
            go.append(i)
            nxt.append(known[-1])
            filled.append(len(known))
    go_t = torch.tensor(go, dtype=torch.long, device=dev)
    cols = torch.arange(batch.ids.shape[1], device=dev)
    # an answer row's position c holds the last question token (c = 0), then gold token c-1
    kept = (cols <= agreed[go_t, None]).long()
    rows = None if len(go) == len(batch.pair_example) else gold[go_t]
    ctx = take_written(written, rows, kept)
    return (
        ctx,
        torch.tensor(nxt, dtype=torch.long, device=dev)[:, None],
        torch.tensor(filled, dtype=torch.long, device=dev),
        go_t,
    )
