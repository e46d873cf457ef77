"""Every example scored clean and under each condition: `Scorer`, the API causal code calls.

start_layer: every condition intervenes at that block's output or above, so the clean
pass records the residual there and the other passes run only the blocks above it
(models/partial_forward.py).

positions: where the conditions act, "answer" (the answer pass only) or "all" (every
position: the condition also runs while the few-shot block's and the questions'
contexts are rebuilt above `start_layer`, which it then needs: it must be the one layer
the conditions act at). exclude_first ("all"): position 0 keeps its clean residual.
Position 0 is the attention sink (BOS where the tokenizer adds one) whose massive
residual norm SAE training leaves out (activations.store.MassiveActivationFilter): an
SAE applied there is off its training distribution; and its residual depends on that
one token alone (attention is causal), so it carries nothing about the problem.

stack_tokens ("answer" only): the conditions that expose their hook at start_layer
(causal.splice.condition) share answer passes, several to a pass (scoring/stacked.py).

Memory with "all": one condition's question contexts at a time, and each condition's
few-shot-block context (the layers above start_layer, batch 1) for as long as its
benchmark's batches last.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from sae_reasoning.models.hooks import keep_clean, recording
from sae_reasoning.models.loading import LanguageModel
from sae_reasoning.models.partial_forward import start_at
from sae_reasoning.scoring.encoding import EncodedBenchmark, check_lengths, stop_token_ids
from sae_reasoning.scoring.greedy import greedy_continuations
from sae_reasoning.scoring.metrics import score_batch
from sae_reasoning.scoring.passes import (
    POSITIONS,
    AnswerBatch,
    Condition,
    iter_answer_batches,
    rebuild_context,
)
from sae_reasoning.scoring.stacked import stack_size, stackable, stacked_logits

log = logging.getLogger(__name__)

# score_conditions(alone=True): the clean answer rows rescored one example to a pass
ALONE = "clean:alone"


@dataclass(frozen=True)
class Scorer:
    """`lm` scored on benchmarks, clean or with conditions acting at block `layer`'s output.

    `layer`: every condition intervenes at that block's output (None: no conditions, or
    conditions anywhere; every pass then runs the whole model). `positions`, `exclude_first`:
    where they act; `stack_tokens`: conditions' answer passes run together (score_conditions).
    """

    lm: LanguageModel
    layer: int | None = None
    positions: str = "answer"
    exclude_first: bool = True
    batch_size: int = 16
    stack_tokens: int = 0

    def baseline(
        self,
        benchmarks: list[EncodedBenchmark],
        *,
        generate_tokens: int = 0,
        progress: str | None = "scoring",
    ) -> pd.DataFrame:
        """The clean scores (with the greedy answer in `generated` when generate_tokens > 0)."""
        return self.score(benchmarks, None, generate_tokens=generate_tokens, progress=progress)[
            "clean"
        ]

    def score(
        self,
        benchmarks: list[EncodedBenchmark],
        conditions: dict[str, Condition] | None,
        *,
        generate_tokens: int = 0,
        progress: str | None = "scoring",
        alone: bool = False,
        batches: list[AnswerBatch] | None = None,
    ) -> dict[str, pd.DataFrame]:
        """condition name -> scores ("clean" included), all conditions in one sweep of the
        batches; with `alone`, also ALONE; `batches`: from self.batches (score_conditions)."""
        return score_conditions(
            self.lm,
            benchmarks,
            conditions,
            batch_size=self.batch_size,
            progress=progress,
            generate_tokens=generate_tokens,
            start_layer=self.layer,
            positions=self.positions,
            exclude_first=self.exclude_first,
            stack_tokens=self.stack_tokens,
            alone=alone,
            batches=batches,
        )

    def batches(
        self, benchmarks: list[EncodedBenchmark], answer_passes: int = 1
    ) -> list[AnswerBatch]:
        """`benchmarks`' batches with their clean contexts, built once for several `score`
        calls on the same examples (each with about `answer_passes` conditions). They hold
        every batch's context (and, after the first call, its clean answer pass's logits)
        at once: for few examples (e.g. the circuit search's)."""
        check_lengths(self.lm, benchmarks)
        every = self.positions == "all"
        return list(
            iter_answer_batches(
                self.lm,
                benchmarks,
                self.batch_size,
                record_layer=self.layer if every else None,
                answer_passes=answer_passes,
                question_passes=answer_passes if every else 1,
            )
        )


def score_conditions(
    lm: LanguageModel,
    benchmarks: list[EncodedBenchmark],
    conditions: dict[str, Condition] | None = None,
    *,
    batch_size: int = 16,
    progress: str | None = "scoring",
    generate_tokens: int = 0,
    start_layer: int | None = None,
    positions: str = "answer",
    exclude_first: bool = True,
    stack_tokens: int = 0,
    alone: bool = False,
    batches: list[AnswerBatch] | None = None,
) -> dict[str, pd.DataFrame]:
    """Score every example under each condition; 'clean' (no intervention) always included.

    A condition (`Condition`) is a function of (batch, segment) returning a context manager
    that installs the intervention (e.g. an SAE splice with features ablated,
    causal.splice.condition) for one pass: segment "answer" for the answer pass, and with
    positions="all" also "prefix" and "question" while those contexts are rebuilt.
    generate_tokens > 0 also records the model's own greedy answer (column `generated` of
    the clean table), decoded from the same cached contexts. start_layer, positions,
    exclude_first: where the conditions act (module docstring).

    stack_tokens (start_layer set, positions="answer"): 0 or 1, one answer pass per
    condition; N, the conditions acting at start_layer whose function is exposed
    (causal.splice.condition) run several to an answer pass, up to about N answer tokens
    a pass (scoring/stacked.py): fewer, larger passes, the same scores up to float
    rounding. Each such pass holds its conditions' copies of the rows' cached context.

    alone: the result also holds ALONE, the clean scores again from answer passes of one
    example each (from the residual at start_layer when set): they differ from clean by
    float rounding alone (causal/floor.py).

    Examples are batched to pad least for the passes run (scoring/batching.py): by answer
    length when many conditions rerun the answer rows. batches: `benchmarks`' batches
    already built (Scorer.batches, the same start_layer and positions), whose clean
    contexts serve again instead of being rebuilt, and whose clean answer passes run at the
    first call only (kept in the batches).
    """
    _check_positions(positions, start_layer)
    conditions = {"clean": lambda _b, _s: contextlib.nullcontext(), **(conditions or {})}
    check_lengths(lm, benchmarks)
    sweep = _Sweep(
        lm,
        start_layer,
        positions == "all",
        exclude_first,
        stop_token_ids(lm.tokenizer),
        stack_tokens,
        reused=batches is not None,
    )
    results: dict[str, list[pd.DataFrame]] = {name: [] for name in conditions}
    if alone:
        results[ALONE] = []
    t0, n, bar = time.time(), 0, None
    if batches is None:
        batches = iter_answer_batches(
            lm,
            benchmarks,
            batch_size,
            progress,
            record_layer=start_layer if sweep.every else None,
            answer_passes=len(conditions),
            question_passes=len(conditions) if sweep.every else 1,
            # answer passes (no grad) write into the questions' context where they can
            spare=None if sweep.every else generate_tokens,
        )
    else:
        total = sum(len(b.examples) for b in batches)
        bar = tqdm(total=total, desc=progress, unit="ex", disable=progress is None)
    for batch in batches:
        for name, df in sweep.score(batch, conditions, generate_tokens, alone).items():
            results[name].append(df)
        batch.release_contexts()  # before the next batch is built beside it
        n += len(batch.examples)
        if bar is not None:
            bar.update(len(batch.examples))
    if bar is not None:
        bar.close()
    log.info(
        "scored %d examples under %d condition(s) in %.1f s", n, len(conditions), time.time() - t0
    )
    return {
        name: pd.concat(dfs, ignore_index=True).sort_values("row").reset_index(drop=True)
        for name, dfs in results.items()
    }


def _check_positions(positions: str, start_layer: int | None) -> None:
    if positions not in POSITIONS:
        raise ValueError(f"positions {positions!r}: expected one of {POSITIONS}")
    if positions == "all" and start_layer is None:
        raise ValueError(
            "positions='all' needs start_layer, the layer the conditions act at: the "
            "contexts are rebuilt from the clean residual there"
        )


class _Sweep:
    """One score_conditions call: every condition's passes over one batch at a time."""

    def __init__(
        self,
        lm,
        layer,
        every: bool,
        exclude_first: bool,
        stop_ids: torch.Tensor,
        stack_tokens=0,
        reused: bool = False,
    ):
        self.lm, self.layer, self.every, self.exclude_first, self.stop_ids = (
            lm,
            layer,
            every,
            exclude_first,
            stop_ids,
        )
        # Stacking needs every condition's pass to start from the clean residual at `layer`
        # with nothing but the answer rows to run (not positions="all": contexts differ).
        self.stack_tokens = stack_tokens if layer is not None and not every else 0
        # condition -> its few-shot-block context, for the benchmark at hand
        self.prefixes: dict = {}
        self.reused = reused  # the batches serve other sweeps: keep their clean passes

    def score(
        self,
        batch: AnswerBatch,
        conditions: dict[str, Condition],
        generate_tokens: int,
        alone: bool = False,
    ) -> dict:
        """condition -> the batch's scores, in the order of `conditions` (then ALONE, with
        `alone`); "clean" first: it records the residual the others start from."""
        out, clean_logp, resid, k = {}, None, None, 1
        first = batch.answer_positions() == 0 if self.every and self.exclude_first else None
        together = []  # the conditions that share answer passes, k to a pass
        for name, cond in conditions.items():
            if name != "clean" and k > 1 and stackable(cond, self.layer):
                together.append(name)
                continue
            if name == "clean":
                logits, recorded = self._clean_pass(batch, cond, first, generate_tokens)
            else:
                logits, recorded = self._answer_pass(batch, name, cond, resid, first)
            if batch.last_of_benchmark:
                self.prefixes.pop(name, None)
            if name == "clean" and self.layer is not None:
                resid = recorded[self.layer]
            df, logp = score_batch(batch, logits, self.stop_ids, clean_logp)
            if name == "clean":
                clean_logp = logp
                if self.stack_tokens > 1:
                    k = stack_size(self.stack_tokens, batch, logits.shape[-1], self.layer)
                if generate_tokens:
                    df["generated"] = greedy_continuations(
                        self.lm, batch, self.stop_ids, generate_tokens, answer_logits=logits
                    )
            out[name] = df
        for i in range(0, len(together), k):
            names = together[i : i + k]
            hooks = [conditions[name].hook(batch, "answer") for name in names]
            chunks = stacked_logits(self.lm.model, self.layer, batch, resid, hooks)
            for name, logits in zip(names, chunks, strict=True):
                out[name] = score_batch(batch, logits, self.stop_ids, clean_logp)[0]
        ordered = {name: out[name] for name in conditions}
        if alone:
            ordered[ALONE] = score_batch(batch, self._alone(batch, resid), self.stop_ids)[0]
        return ordered

    def _alone(self, batch: AnswerBatch, resid) -> torch.Tensor:
        """The clean answer rows' logits, from one pass per example (above the layer, from
        the clean residual there, when the sweep has one)."""
        model, layer, logits = self.lm.model, self.layer, []
        for i in range(len(batch.examples)):
            if layer is None:
                logits.append(batch.run_example(model, i))
                continue
            with start_at(model, layer, resid[batch.pair_example == i]):
                logits.append(batch.run_example(model, i, from_layer=layer + 1))
        return torch.cat(logits)

    def _clean_pass(self, batch: AnswerBatch, cond: Condition, first, generate_tokens: int):
        """The clean answer pass (logits, the residual recorded at the layer): run once for
        a batch the caller reuses (score_conditions(batches=)), kept in the batch."""
        key = (self.layer, self.every, self.exclude_first)
        if self.reused and not generate_tokens and key in batch.clean_passes:
            return batch.clean_passes[key]
        # with generate_tokens, decoding goes on from the pass (scoring/greedy.py)
        out = self._answer_pass(batch, "clean", cond, None, first, spare=generate_tokens)
        if self.reused and not generate_tokens:
            batch.clean_passes[key] = out
        return out

    def _answer_pass(
        self, batch: AnswerBatch, name: str, cond: Condition, resid, first, spare: int = 0
    ):
        """(logits of the answer rows under `cond`, what the clean pass recorded); spare:
        AnswerBatch.run's."""
        model, layer = self.lm.model, self.layer
        context, exempt = None, contextlib.nullcontext()
        if layer is None:
            start = contextlib.nullcontext({})
        elif name == "clean":
            start = recording(model, [layer], stop=False)
        else:
            start = start_at(model, layer, resid)
            if self.every:
                with torch.no_grad():
                    context = rebuild_context(
                        model,
                        layer,
                        batch,
                        cond,
                        self.prefixes,
                        name,
                        exclude_first=self.exclude_first,
                    )
                if first is not None and bool(first.any()):
                    exempt = keep_clean(model, layer, resid, first)
        with start as recorded, cond(batch, "answer"), exempt, torch.no_grad():
            logits = batch.run(model, context=context, spare=spare)
        return logits, recorded
