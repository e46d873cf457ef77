"""How well a model answers each prompt: clean, or under any intervention.

Per example:
  gold_logprob   summed log-probability of the gold answer tokens, teacher-forced
  correct        open answers: greedy decoding reproduces the gold answer exactly and then
                 ends the line (checked on the teacher-forced pass: every gold token is the
                 argmax, and so is a line break after it); choice questions: the gold
                 choice has the highest summed log-probability among the choices
  logit_diff     choice questions: summed log-prob of the gold choice minus that of the
                 best other choice (the logit difference for one-token choices); NaN for
                 open answers
  kl             KL(clean || condition) of the next-token distribution at the answer
                 positions, averaged over them (0 for the clean condition)

Prompts share a few-shot block per benchmark; it is run once and cached, each question
is run once per batch, and every condition then runs only the answer tokens on top
(see models/cached_forward.py). Where interventions act (`positions`):

  answer  the answer positions: the last prompt token and the answer tokens. Only the
          answer pass runs per condition.
  all     every position of the sequence (few-shot block, question, answer), except
          position 0 when `exclude_first` (see score_conditions). An intervention at
          block L's output leaves blocks 0..L as they were, so per condition only the
          blocks above L rerun, from the clean residual at L recorded while the clean
          contexts were built: over the few-shot block once per benchmark, over the
          questions once per batch; then the answer pass runs on that condition's context.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator

import pandas as pd
import torch
from tqdm.auto import tqdm

from sae_reasoning.models.cached_forward import Context, forward, select
from sae_reasoning.models.hooks import keep_clean, recording
from sae_reasoning.models.loading import LanguageModel
from sae_reasoning.models.partial_forward import forward_above, start_at

log = logging.getLogger(__name__)

# A condition installs its intervention for one pass: condition(batch, segment), with
# segment the pass being run, "prefix" (the benchmark's few-shot block, batch 1), "question"
# (the batch's question segment) or "answer" (the answer rows), so that an intervention can
# depend on where it acts (mean/resample ablation references: causal/references.py).
Condition = Callable[["AnswerBatch", str], ContextManager]
POSITIONS = ("answer", "all")
SEGMENTS = ("prefix", "question", "answer")


@dataclass
class EncodedExample:
    row: int                      # position in the prompts table
    id: str
    benchmark: str
    split: str
    question: list[int]           # the example's own prompt tokens (after the shared block)
    answers: list[list[int]]      # open: [gold answer]; choice: one token list per choice
    gold: int                     # index of the gold answer in `answers`
    is_choice: bool
    chance: float


@dataclass
class EncodedBenchmark:
    name: str
    prefix: list[int]             # shared few-shot block (with BOS where the tokenizer adds one)
    examples: list[EncodedExample] = field(default_factory=list)


def shared_prefix(texts: list[str]) -> str:
    """The few-shot block every prompt of a benchmark starts with, cut at a blank line."""
    if not texts:
        return ""
    common = os.path.commonprefix(texts) if len(texts) > 1 else texts[0]
    # Never swallow an example's own question: cut at the last blank line before it ends.
    cut = common.rfind("\n\n", 0, min(len(t) for t in texts) - 1)
    return common[:cut + 2] if cut >= 0 else ""


def encode_prompts(tokenizer, prompts: pd.DataFrame) -> list[EncodedBenchmark]:
    """Tokenize a prompts table into shared blocks, questions and answer candidates."""
    required = {"id", "benchmark", "prompt", "target", "answer_type"}
    missing = required - set(prompts.columns)
    if missing:
        raise ValueError(f"prompts table lacks columns {sorted(missing)}")
    if len(prompts) == 0:
        raise ValueError("prompts table is empty: nothing to score or capture")
    out = []
    prompts = prompts.reset_index(drop=True)
    for name, group in prompts.groupby("benchmark", sort=False):
        prefix = shared_prefix(group["prompt"].tolist())
        bench = EncodedBenchmark(name, prefix_ids(tokenizer, prefix))
        for row, rec in group.iterrows():
            question = tokenizer(rec["prompt"][len(prefix):], add_special_tokens=False)["input_ids"]
            if not question:
                raise ValueError(f"prompts row {row} ({rec['id']}): empty question after the shared block")
            is_choice = rec["answer_type"] == "choice"
            if is_choice:
                targets = list(rec["choice_targets"])
                if rec["target"] not in targets:
                    raise ValueError(f"prompts row {row} ({rec['id']}): target {rec['target']!r} "
                                     f"is not one of its choice_targets {targets}")
                gold = targets.index(rec["target"])
            else:
                targets, gold = [rec["target"]], 0
            answers = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in targets]
            bench.examples.append(EncodedExample(
                row=int(row), id=str(rec["id"]), benchmark=str(name), split=str(rec.get("split", "")),
                question=question, answers=answers, gold=gold, is_choice=is_choice,
                chance=float(rec.get("chance", 1.0 / len(targets) if is_choice else 0.0)),
            ))
        out.append(bench)
    return out


def prefix_ids(tokenizer, prefix: str) -> list[int]:
    """The shared block's tokens; with no block, whatever the tokenizer starts with (BOS)."""
    return list(tokenizer(prefix)["input_ids"] if prefix else tokenizer("", add_special_tokens=True)["input_ids"])


def context_window(config) -> int | None:
    """The model's context length in tokens (None if its config does not say)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_lengths(lm: LanguageModel, benchmarks: list[EncodedBenchmark]) -> None:
    """Every prompt + answer fits the model's context window (named if not), before any work."""
    limit = context_window(lm.model.config)
    if not limit:
        return
    for bench in benchmarks:
        for ex in bench.examples:
            n = len(bench.prefix) + len(ex.question) + max(len(a) for a in ex.answers) + 1
            if n > limit:
                raise ValueError(f"{lm.name}: prompt {ex.id} ({bench.name}) is {n} tokens with its answer, "
                                 f"over the model's context of {limit}; use fewer shots or shorter questions")


def stop_token_ids(tokenizer) -> torch.Tensor:
    """Tokens that end an answer line: anything starting with a line break, and EOS."""
    vocab = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab)])
    ids = [i for i, t in enumerate(texts) if t.startswith("\n")]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(sorted(set(ids)), dtype=torch.long)


def pad_right(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


@dataclass
class Segment:
    """A clean context-building pass (few-shot block or questions), kept to rerun it."""

    ids: torch.Tensor             # [B, S] right-padded tokens
    mask: torch.Tensor
    positions: torch.Tensor       # [B, S] position ids
    resid: torch.Tensor           # [B, S, d_model] clean residual after the recorded layer
    context: Context              # clean context after the pass


@dataclass
class AnswerBatch:
    """One batch of examples with its cached context, ready for answer passes."""

    index: int
    examples: list[EncodedExample]
    context: Context | None
    pair_example: torch.Tensor    # [R] example (within batch) of each answer row
    pair_answer: torch.Tensor     # [R] candidate index of each answer row
    ids: torch.Tensor             # [R, S] last question token + candidate answer, right-padded
    mask: torch.Tensor
    answer_len: torch.Tensor      # [R]
    # With iter_answer_batches(record_layer=): the passes that built `context`, to rerun
    # them under an intervention (rebuild_context). `prefix` is the benchmark's (batch 1),
    # the same object for all its batches.
    prefix: Segment | None = None
    question: Segment | None = None
    last_of_benchmark: bool = False

    _rows_context: Context | None = field(default=None, repr=False)

    def run(self, model, *, grad: bool = False, context: Context | None = None):
        """Logits of the answer rows, on the batch's clean context or on `context` (same examples)."""
        ctx = self.context if context is None else context
        if ctx is not None and len(self.pair_example) != ctx.batch_size:
            # One row per answer candidate; the clean one copied once per batch, not once per condition.
            if context is not None:
                ctx = select(ctx, self.pair_example)
            else:
                if self._rows_context is None:
                    self._rows_context = select(ctx, self.pair_example)
                ctx = self._rows_context
        with torch.set_grad_enabled(grad):
            out, _ = forward(model, self.ids, self.mask, ctx)
        return out.logits

    def gold_rows(self) -> torch.Tensor:
        """[R] bool: the answer rows that hold their example's gold answer."""
        gold = torch.tensor([e.gold for e in self.examples], device=self.pair_answer.device)
        return self.pair_answer == gold[self.pair_example]

    def answer_positions(self) -> torch.Tensor:
        """[R, S] position ids of the answer rows."""
        start = (self.context.length[self.pair_example] if self.context is not None
                 else torch.zeros(len(self.pair_example), dtype=torch.long, device=self.ids.device))
        return start[:, None].to(self.ids.device) + torch.arange(self.ids.shape[1], device=self.ids.device)


def iter_answer_batches(lm: LanguageModel, benchmarks: list[EncodedBenchmark], batch_size: int = 16,
                        progress: str | None = None, record_layer: int | None = None) -> Iterator[AnswerBatch]:
    """Build contexts (shared block once per benchmark, then questions) batch by batch.

    record_layer: also keep each context-building pass with its residual after that block
    (batch.prefix, batch.question), so that rebuild_context can rerun the blocks above it.
    """
    model, dev = lm.model, lm.device
    pad = lm.tokenizer.pad_token_id
    total = sum(len(b.examples) for b in benchmarks)
    bar = tqdm(total=total, desc=progress, unit="ex", disable=progress is None)
    index = 0

    # Grad mode is global state: never hold no_grad across a yield (the consumer may need
    # gradients, e.g. attribution), only around the context-building passes.
    def run(ids, mask, ctx):
        """A clean context-building pass: (new context, its Segment if recording)."""
        start = ctx.length if ctx is not None else torch.zeros(len(ids), dtype=torch.long, device=dev)
        with torch.no_grad(), (recording(model, [record_layer], stop=False) if record_layer is not None
                               else contextlib.nullcontext({})) as rec:
            _, new = forward(model, ids, mask, ctx, keep=True, logits=False)
        if record_layer is None:
            return new, None
        positions = start[:, None].to(dev) + torch.arange(ids.shape[1], device=dev)
        return new, Segment(ids, mask, positions, rec[record_layer], new)

    for bench in benchmarks:
        prefix_ctx = prefix_seg = None
        if bench.prefix:
            ids = torch.tensor([bench.prefix], device=dev)
            prefix_ctx, prefix_seg = run(ids, torch.ones_like(ids), None)
        order = sorted(bench.examples, key=lambda e: len(e.question))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            ctx = prefix_ctx.expand(len(chunk)) if prefix_ctx is not None else None
            heads = [e.question[:-1] for e in chunk]
            question_seg = None
            if any(heads):
                ids, mask = pad_right(heads, pad, dev)
                ctx, question_seg = run(ids, mask, ctx)
            pairs = [(i, j) for i, e in enumerate(chunk) for j in range(len(e.answers))]
            seqs = [[chunk[i].question[-1]] + chunk[i].answers[j] for i, j in pairs]
            ids, mask = pad_right(seqs, pad, dev)
            yield AnswerBatch(
                index=index, examples=chunk, context=ctx,
                pair_example=torch.tensor([i for i, _ in pairs], device=dev),
                pair_answer=torch.tensor([j for _, j in pairs], device=dev),
                ids=ids, mask=mask,
                answer_len=torch.tensor([len(chunk[i].answers[j]) for i, j in pairs], device=dev),
                prefix=prefix_seg, question=question_seg, last_of_benchmark=start + batch_size >= len(order),
            )
            index += 1
            bar.update(len(chunk))
    bar.close()


def rerun_segment(model, layer: int, segment: Segment, context: Context | None,
                  intervention: Callable[[], ContextManager], *, exclude_first: bool = True) -> Context:
    """The context after `segment` with `intervention()` acting at block `layer`'s output at
    every position of it (bar position 0 when exclude_first), from its clean residual there.

    `context`: the context before the segment under the same intervention (None at the start)."""
    first = segment.positions == 0 if exclude_first else None
    exempt = (keep_clean(model, layer, segment.resid, first) if first is not None and bool(first.any())
              else contextlib.nullcontext())
    with intervention(), exempt:     # in this order: the exemption's hook runs after the intervention's
        return forward_above(model, layer, segment.resid, segment.ids, segment.mask, context, segment.context)


def rebuild_context(model, layer: int, batch: AnswerBatch, condition: Condition,
                    prefixes: dict, key, *, exclude_first: bool = True) -> Context | None:
    """The batch's context (shared block, then questions) with the condition at every position:
    condition(batch, "prefix") over the shared block, condition(batch, "question") over the questions.

    The shared block is the same for all the batches of a benchmark: its context is built at
    the first and kept in `prefixes[key]`; the caller drops it after the benchmark's last batch.
    (So a condition must act on the block the same way whichever of the benchmark's batches
    it is bound to.)
    """
    ctx = None
    if batch.prefix is not None:
        if key not in prefixes:
            prefixes[key] = rerun_segment(model, layer, batch.prefix, None, lambda: condition(batch, "prefix"),
                                          exclude_first=exclude_first)
        ctx = prefixes[key].expand(len(batch.examples))
    if batch.question is not None:
        ctx = rerun_segment(model, layer, batch.question, ctx, lambda: condition(batch, "question"),
                            exclude_first=exclude_first)
    return ctx


def answer_logprobs(batch: AnswerBatch, logits: torch.Tensor):
    """Per answer row: summed gold-token log-probs, all-argmax flag, log-softmax at positions.

    Position j of an answer row predicts answer token j; position len(answer) predicts what
    follows the answer (a line break, for a greedy exact match).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    tokens = batch.ids[:, 1:]
    tok_lp = logp[:, :-1].gather(-1, tokens[..., None])[..., 0]          # [R, S-1]
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None]
    in_answer = pos < batch.answer_len[:, None]
    summed = (tok_lp * in_answer).sum(1)
    argmax_ok = ((logp[:, :-1].argmax(-1) == tokens) | ~in_answer).all(1)
    return logp, summed, argmax_ok


def score_batch(batch: AnswerBatch, logits: torch.Tensor, stop_ids: torch.Tensor,
                clean_logp: torch.Tensor | None = None) -> pd.DataFrame:
    logp, summed, argmax_ok = answer_logprobs(batch, logits)
    rows = []
    r = 0
    for i, ex in enumerate(batch.examples):
        n = len(ex.answers)
        sl = slice(r, r + n)
        gold_row = r + ex.gold
        logit_diff = float("nan")
        if ex.is_choice:
            predicted = int(summed[sl].argmax())
            correct = predicted == ex.gold
            # Gold choice against the best other choice (summed log-probs; for one-token
            # choices this is the logit difference, the softmax normaliser cancels).
            others = torch.cat([summed[r:gold_row], summed[gold_row + 1:r + n]])
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
            kl = float((p.exp() * (p - q)).sum(-1).mean())
        rows.append({
            "row": ex.row, "id": ex.id, "benchmark": ex.benchmark, "split": ex.split,
            "gold_logprob": float(summed[gold_row]), "logit_diff": logit_diff,
            "n_answer_tokens": len(ex.answers[ex.gold]),
            "correct": bool(correct), "predicted_choice": predicted, "chance": ex.chance, "kl": kl,
        })
        r += n
    return pd.DataFrame(rows), logp


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
) -> dict[str, pd.DataFrame]:
    """Score every example under each condition; 'clean' (no intervention) always included.

    generate_tokens > 0 also records the model's own greedy answer (column `generated`
    of the clean table), decoded from the same cached contexts.

    A condition (`Condition`) is a function of (batch, segment) returning a context manager
    that installs the intervention (e.g. an SAE splice with features ablated,
    causal.splice.condition) for one pass: segment "answer" for the answer pass, and with
    positions="all" also "prefix" and "question" while those contexts are rebuilt.

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

    Memory with "all": one condition's question contexts at a time, and each condition's
    few-shot-block context (the layers above start_layer, batch 1) for as long as its
    benchmark's batches last.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions {positions!r}: expected one of {POSITIONS}")
    if positions == "all" and start_layer is None:
        raise ValueError("positions='all' needs start_layer, the layer the conditions act at: the "
                         "contexts are rebuilt from the clean residual there")
    every = positions == "all"
    conditions = {"clean": lambda _b, _s: contextlib.nullcontext(), **(conditions or {})}
    check_lengths(lm, benchmarks)
    stop_ids = stop_token_ids(lm.tokenizer)
    results: dict[str, list[pd.DataFrame]] = {name: [] for name in conditions}
    t0, n = time.time(), 0
    prefixes: dict[str, Context] = {}     # condition -> its few-shot-block context, for the benchmark at hand
    for batch in iter_answer_batches(lm, benchmarks, batch_size, progress,
                                     record_layer=start_layer if every else None):
        clean_logp = None
        resid = None
        first = batch.answer_positions() == 0 if every and exclude_first else None
        for name, cond in conditions.items():
            context, exempt = None, contextlib.nullcontext()
            if start_layer is None:
                start = contextlib.nullcontext({})
            elif name == "clean":
                start = recording(lm.model, [start_layer], stop=False)
            else:
                start = start_at(lm.model, start_layer, resid)
                if every:
                    with torch.no_grad():
                        context = rebuild_context(lm.model, start_layer, batch, cond, prefixes,
                                                  name, exclude_first=exclude_first)
                    if first is not None and bool(first.any()):
                        exempt = keep_clean(lm.model, start_layer, resid, first)
            with start as recorded, cond(batch, "answer"), exempt, torch.no_grad():
                logits = batch.run(lm.model, context=context)
            del context
            if batch.last_of_benchmark:
                prefixes.pop(name, None)
            if name == "clean" and start_layer is not None:
                resid = recorded[start_layer]
            df, logp = score_batch(batch, logits, stop_ids, clean_logp)
            if name == "clean":
                clean_logp = logp
                if generate_tokens:
                    df["generated"] = greedy_continuations(lm, batch, stop_ids, generate_tokens)
            results[name].append(df)
        n += len(batch.examples)
    log.info("scored %d examples under %d condition(s) in %.1f s", n, len(conditions), time.time() - t0)
    return {name: pd.concat(dfs, ignore_index=True).sort_values("row").reset_index(drop=True)
            for name, dfs in results.items()}


def greedy_continuations(lm: LanguageModel, batch: AnswerBatch, stop_ids: torch.Tensor,
                         max_new_tokens: int = 12) -> list[str]:
    """What the model actually writes after each prompt of the batch (greedy, one line)."""
    ctx = batch.context
    n = len(batch.examples)
    nxt = torch.tensor([[e.question[-1]] for e in batch.examples], device=lm.device)
    out = torch.zeros((n, 0), dtype=torch.long, device=lm.device)
    done = torch.zeros(n, dtype=torch.bool, device=lm.device)
    stop_ids = stop_ids.to(lm.device)
    pad = lm.tokenizer.pad_token_id
    with torch.no_grad():
        for _ in range(max_new_tokens):
            res, ctx = forward(lm.model, nxt, torch.ones_like(nxt), ctx, keep=True)
            nxt = res.logits[:, -1].argmax(-1, keepdim=True)
            done |= torch.isin(nxt[:, 0], stop_ids)
            out = torch.cat([out, torch.where(done[:, None], pad, nxt)], 1)
            if done.all():
                break
    texts = [lm.tokenizer.decode([t for t in toks if t != pad]) for toks in out.tolist()]
    return [t.split("\n")[0].strip() for t in texts]


def greedy_answers(lm: LanguageModel, benchmarks: list[EncodedBenchmark], *, max_new_tokens: int = 12,
                   batch_size: int = 16) -> pd.DataFrame:
    """Greedy answers of every example (for scoring too, use score_conditions(generate_tokens=))."""
    stop_ids = stop_token_ids(lm.tokenizer)
    rows = []
    for batch in iter_answer_batches(lm, benchmarks, batch_size, progress="generating"):
        texts = greedy_continuations(lm, batch, stop_ids, max_new_tokens)
        rows += [{"row": ex.row, "generated": t} for ex, t in zip(batch.examples, texts)]
    return pd.DataFrame(rows).sort_values("row").reset_index(drop=True)


def accuracy_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark: n, accuracy, chance, mean gold log-prob."""
    g = scores.groupby("benchmark")
    return pd.DataFrame({
        "n": g.size(), "accuracy": g["correct"].mean(), "chance": g["chance"].mean(),
        "gold_logprob": g["gold_logprob"].mean(),
    }).reset_index()

