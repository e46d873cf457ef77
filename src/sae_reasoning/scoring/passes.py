"""The cached passes scoring runs (see models/cached_forward.py, models/partial_forward.py).

Per benchmark the shared few-shot block runs once, per batch the questions run once, and
every answer pass (clean, or under a condition) runs only the answer tokens on top of that
cached context. Under positions="all" the contexts are rebuilt with the condition acting
at every position: only the blocks above the intervened layer rerun, from the clean
residual there recorded while the clean contexts were built (`record_layer`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from sae_reasoning.models.cached_forward import (
    Context,
    forward,
    head_rows,
    room_left,
    select,
    with_room,
)
from sae_reasoning.models.hooks import keep_clean, recording
from sae_reasoning.models.loading import LanguageModel
from sae_reasoning.models.partial_forward import forward_above
from sae_reasoning.scoring.batching import batches
from sae_reasoning.scoring.encoding import EncodedBenchmark, EncodedExample, pad_right

# A condition installs its intervention for one pass: condition(batch, segment), with
# segment the pass being run, "prefix" (the benchmark's few-shot block, batch 1), "question"
# (the batch's question segment) or "answer" (the answer rows), so that an intervention can
# depend on where it acts (mean/resample ablation references: causal/references.py).
Condition = Callable[["AnswerBatch", str], contextlib.AbstractContextManager]
POSITIONS = ("answer", "all")
SEGMENTS = ("prefix", "question", "answer")


@dataclass
class Segment:
    """A clean context-building pass (few-shot block or questions), kept to rerun it."""

    ids: torch.Tensor  # [B, S] right-padded tokens
    mask: torch.Tensor
    positions: torch.Tensor  # [B, S] position ids
    resid: torch.Tensor  # [B, S, d_model] clean residual after the recorded layer
    context: Context  # clean context after the pass


@dataclass
class AnswerBatch:
    """One batch of examples with its cached context, ready for answer passes."""

    index: int
    examples: list[EncodedExample]
    context: Context | None
    pair_example: torch.Tensor  # [R] example (within batch) of each answer row
    pair_answer: torch.Tensor  # [R] candidate index of each answer row
    ids: torch.Tensor  # [R, S] last question token + candidate answer, right-padded
    mask: torch.Tensor
    answer_len: torch.Tensor  # [R]
    # With iter_answer_batches(record_layer=): the passes that built `context`, to rerun
    # them under an intervention (rebuild_context). `prefix` is the benchmark's (batch 1),
    # the same object for all its batches.
    prefix: Segment | None = None
    question: Segment | None = None
    last_of_benchmark: bool = False

    # (room, from_layer) -> (stack, the rows' context that many times over): copied once
    # per batch, not once per pass; a smaller stack takes the first rows of a larger one
    _rows_contexts: dict = field(default_factory=dict, repr=False)
    # A batch reused for several sweeps (Scorer.batches): its clean answer pass, kept by
    # the sweep (scorer._Sweep) under the layer it recorded, so that it runs once
    clean_passes: dict = field(default_factory=dict, repr=False)

    def run(
        self,
        model,
        *,
        grad: bool = False,
        context: Context | None = None,
        stack: int = 1,
        from_layer: int = 0,
        spare: int = 0,
        packed: bool = False,
    ):
        """Logits of the answer rows, on the batch's clean context or on `context` (same
        examples).

        stack: the rows `stack` times over (rows k*R:(k+1)*R are copy k, e.g. one condition
        each: scoring/stacked.py), logits [stack * R, S, V]. from_layer: the pass starts there
        (partial_forward.start_at): the cached layers below it are not copied. spare: room
        left after the pass in the rows' context, where greedy decoding goes on from it
        (rows_context; scoring/greedy.py). packed (no grad, on the clean context): the
        `stack` copies end to end along the sequence on one copy of the context
        (cached_forward.forward(copies=)): logits [R, stack * S, V], copy k at columns
        k*S:(k+1)*S."""
        if packed and stack > 1:
            if grad or context is not None:
                raise ValueError("a packed pass runs without grad on the clean context")
            room = stack * self.ids.shape[1]
            ctx = self._rows_context(self.context, 1, room, from_layer)
            with torch.no_grad():
                out, _ = forward(model, self.ids, self.mask, ctx, copies=stack)
            return out.logits
        ctx = self.context if context is None else context
        rows = self.pair_example
        # One row per answer candidate, the clean one copied once per batch, not once per
        # condition; no-grad passes write their keys/values into room reserved beside it.
        room = 0 if grad else self.ids.shape[1] + spare
        if ctx is not None and (room or stack * len(rows) != ctx.batch_size):
            if context is not None:
                ctx = select(ctx, rows, room, from_layer=from_layer, copies=stack)
            else:
                ctx = self._rows_context(ctx, stack, room, from_layer)
        ids, mask = self.ids.repeat(stack, 1), self.mask.repeat(stack, 1)
        with torch.set_grad_enabled(grad):
            out, _ = forward(model, ids, mask, ctx)
        return out.logits

    def run_example(self, model, i: int, *, from_layer: int = 0) -> torch.Tensor:
        """Logits of example `i`'s answer rows alone (a pass of its rows only, on its clean
        context: other matmul shapes than the batch's, hence other rounding: causal/floor.py).
        from_layer: as in `run`."""
        rows = (self.pair_example == i).nonzero()[:, 0]
        ctx = self.context
        if ctx is not None:
            ctx = select(ctx, self.pair_example[rows], self.ids.shape[1], from_layer=from_layer)
        with torch.no_grad():
            out, _ = forward(model, self.ids[rows], self.mask[rows], ctx)
        return out.logits

    def _rows_context(self, ctx: Context, stack: int, room: int, from_layer: int):
        """The context of the answer rows `stack` times over, copied at most once per
        (room, from_layer) for the batch: a smaller stack views the first rows."""
        if stack == 1 and self._writes_in_place(room):
            return ctx
        have, full = self._rows_contexts.get((room, from_layer), (0, None))
        if have < stack:
            full = select(ctx, self.pair_example, room, from_layer=from_layer, copies=stack)
            have = stack
            self._rows_contexts[room, from_layer] = have, full
        return full if have == stack else head_rows(full, stack * len(self.pair_example))

    def rows_context(self, spare: int) -> Context | None:
        """The answer rows' context a no-grad `run(model, spare=spare)` on the batch's own
        context wrote its keys/values into (after the `length` tokens, in its room), or
        None: there is none."""
        room = self.ids.shape[1] + spare
        if self._writes_in_place(room):
            return self.context
        have, full = self._rows_contexts.get((room, 0), (0, None))
        return full if have <= 1 else head_rows(full, len(self.pair_example))

    def _writes_in_place(self, room: int) -> bool:
        """Whether answer passes write straight into the batch's own context: one answer row
        per example (rows in example order) and `room` left in it (iter_answer_batches'
        spare)."""
        return len(self.pair_example) == len(self.examples) and room_left(self.context) >= room

    def release_contexts(self) -> None:
        """Drop the rows' contexts copied for this batch's passes (the batch's own context
        stays): a sweep is done with them before the next batch is built."""
        self._rows_contexts.clear()

    def gold_rows(self) -> torch.Tensor:
        """[R] bool: the answer rows that hold their example's gold answer."""
        gold = torch.tensor([e.gold for e in self.examples], device=self.pair_answer.device)
        return self.pair_answer == gold[self.pair_example]

    def answer_positions(self) -> torch.Tensor:
        """[R, S] position ids of the answer rows."""
        start = (
            self.context.length[self.pair_example]
            if self.context is not None
            else torch.zeros(len(self.pair_example), dtype=torch.long, device=self.ids.device)
        )
        return start[:, None].to(self.ids.device) + torch.arange(
            self.ids.shape[1], device=self.ids.device
        )


def iter_answer_batches(
    lm: LanguageModel,
    benchmarks: list[EncodedBenchmark],
    batch_size: int = 16,
    progress: str | None = None,
    record_layer: int | None = None,
    answer_passes: int = 1,
    question_passes: int = 1,
    spare: int | None = None,
) -> Iterator[AnswerBatch]:
    """Build contexts (shared block once per benchmark, then questions) batch by batch.

    record_layer: also keep each context-building pass with its residual after that block
    (batch.prefix, batch.question), so that rebuild_context can rerun the blocks above it.
    answer_passes, question_passes: how many of each the caller runs per batch; examples
    are grouped to pad least for them (scoring/batching.py).
    spare (no-grad answer passes only): the questions' context is built with room for the
    answer rows and `spare` more tokens, so that where each example has one answer row,
    its answer passes (and greedy decoding after them) write into it instead of into a
    copy (AnswerBatch.run). An in-place write would break a graph that saved the context.
    """
    total = sum(len(b.examples) for b in benchmarks)
    bar = tqdm(total=total, desc=progress, unit="ex", disable=progress is None)
    index = 0
    for bench in benchmarks:
        prefix_ctx = prefix_seg = None
        if bench.prefix:
            ids = torch.tensor([bench.prefix], device=lm.device)
            prefix_ctx, prefix_seg = _clean_pass(
                lm.model, ids, torch.ones_like(ids), None, record_layer
            )
        chunks = batches(bench.examples, batch_size, answer_passes, question_passes)
        for i, chunk in enumerate(chunks):
            yield _answer_batch(
                lm,
                chunk,
                prefix_ctx,
                record_layer,
                index=index,
                prefix=prefix_seg,
                last_of_benchmark=i == len(chunks) - 1,
                spare=spare,
            )
            index += 1
            bar.update(len(chunk))
    bar.close()


def _clean_pass(model, ids, mask, ctx, record_layer, in_place: bool = False):
    """A clean context-building pass: (new context, its Segment if recording)."""
    # Grad mode is global state: never hold no_grad across a yield (the consumer may need
    # gradients, e.g. attribution), only around the context-building passes.
    dev = ids.device
    start = ctx.length if ctx is not None else torch.zeros(len(ids), dtype=torch.long, device=dev)
    with (
        torch.no_grad(),
        (
            recording(model, [record_layer], stop=False)
            if record_layer is not None
            else contextlib.nullcontext({})
        ) as rec,
    ):
        _, new = forward(model, ids, mask, ctx, keep=True, logits=False, in_place=in_place)
    if record_layer is None:
        return new, None
    positions = start[:, None].to(dev) + torch.arange(ids.shape[1], device=dev)
    return new, Segment(ids, mask, positions, rec[record_layer], new)


def _answer_batch(
    lm, chunk: list[EncodedExample], prefix_ctx, record_layer, spare=None, **where
) -> AnswerBatch:
    """The batch's question pass on the benchmark's block, and its answer rows (one per
    candidate)."""
    dev, pad = lm.device, lm.tokenizer.pad_token_id
    ctx = prefix_ctx.expand(len(chunk)) if prefix_ctx is not None else None
    heads = [e.question[:-1] for e in chunk]
    pairs = [(i, j) for i, e in enumerate(chunk) for j in range(len(e.answers))]
    seqs = [[chunk[i].question[-1]] + chunk[i].answers[j] for i, j in pairs]
    question_seg = None
    if any(heads):
        ids, mask = pad_right(heads, pad, dev)
        # room for the answer rows (and `spare`) where they are one per example: copying the
        # block into the room's buffer costs what concatenating the questions onto it does
        roomy = spare is not None and ctx is not None and len(pairs) == len(chunk)
        if roomy:
            ctx = with_room(ctx, ids.shape[1] + max(map(len, seqs)) + spare)
        ctx, question_seg = _clean_pass(lm.model, ids, mask, ctx, record_layer, in_place=roomy)
    ids, mask = pad_right(seqs, pad, dev)
    return AnswerBatch(
        examples=chunk,
        context=ctx,
        pair_example=torch.tensor([i for i, _ in pairs], device=dev),
        pair_answer=torch.tensor([j for _, j in pairs], device=dev),
        ids=ids,
        mask=mask,
        answer_len=torch.tensor([len(chunk[i].answers[j]) for i, j in pairs], device=dev),
        question=question_seg,
        **where,
    )


def rerun_segment(
    model,
    layer: int,
    segment: Segment,
    context: Context | None,
    intervention: Callable[[], contextlib.AbstractContextManager],
    *,
    exclude_first: bool = True,
) -> Context:
    """The context after `segment` with `intervention()` acting at block `layer`'s output at
    every position of it (bar position 0 when exclude_first), from its clean residual there.

    `context`: the context before the segment under the same intervention (None at the start)."""
    first = segment.positions == 0 if exclude_first else None
    exempt = (
        keep_clean(model, layer, segment.resid, first)
        if first is not None and bool(first.any())
        else contextlib.nullcontext()
    )
    with (
        intervention(),
        exempt,
    ):  # in this order: the exemption's hook runs after the intervention's
        return forward_above(
            model, layer, segment.resid, segment.ids, segment.mask, context, segment.context
        )


def rebuild_context(
    model,
    layer: int,
    batch: AnswerBatch,
    condition: Condition,
    prefixes: dict,
    key,
    *,
    exclude_first: bool = True,
) -> Context | None:
    """The batch's context (shared block, then questions) with the condition at every position:
    condition(batch, "prefix") over the shared block, condition(batch, "question") over the
    questions.

    The shared block is the same for all the batches of a benchmark: its context is built at
    the first and kept in `prefixes[key]`; the caller drops it after the benchmark's last batch.
    (So a condition must act on the block the same way whichever of the benchmark's batches
    it is bound to.)
    """
    ctx = None
    if batch.prefix is not None:
        if key not in prefixes:
            prefixes[key] = rerun_segment(
                model,
                layer,
                batch.prefix,
                None,
                lambda: condition(batch, "prefix"),
                exclude_first=exclude_first,
            )
        ctx = prefixes[key].expand(len(batch.examples))
    if batch.question is not None:
        ctx = rerun_segment(
            model,
            layer,
            batch.question,
            ctx,
            lambda: condition(batch, "question"),
            exclude_first=exclude_first,
        )
    return ctx
