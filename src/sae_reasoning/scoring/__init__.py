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

The package is the one layer between the science and the model's passes: `Scorer` scores
benchmarks (clean, or under conditions at a layer); code that runs its own passes
(attribution, ablation references) uses the batches and `interventions`, never models/.

  encoding.py       prompts -> token lists (shared block, questions, answer candidates)
  batching.py       which examples share a batch (the grouping that pads least)
  passes.py         the cached passes: batches, contexts, contexts rebuilt under a condition
  metrics.py        logits -> per-example scores; greedy continuations
  scorer.py         Scorer and score_conditions: every condition over every batch
  stacked.py        several conditions' answer passes run as one (stack_tokens)
  encode_memo.py    one SAE encode per residual tensor within a stacked pass
  interventions.py  the model hooks interventions use (splices, probes, recordings)
"""

from sae_reasoning.scoring.encoding import (
    EncodedBenchmark,
    EncodedExample,
    check_lengths,
    context_window,
    encode_prompts,
    pad_right,
    prefix_ids,
    shared_prefix,
    stop_token_ids,
)
from sae_reasoning.scoring.greedy import greedy_continuations
from sae_reasoning.scoring.interventions import (
    LanguageModel,
    capture_residuals,
    cut_above,
    hook_point,
    parse_hook_point,
    patch_residual,
    recording,
)
from sae_reasoning.scoring.metrics import answer_logprobs, score_batch
from sae_reasoning.scoring.passes import (
    POSITIONS,
    SEGMENTS,
    AnswerBatch,
    Condition,
    Segment,
    iter_answer_batches,
    rebuild_context,
    rerun_segment,
)
from sae_reasoning.scoring.scorer import ALONE, Scorer, score_conditions

__all__ = [
    "ALONE",
    "POSITIONS",
    "SEGMENTS",
    "AnswerBatch",
    "Condition",
    "EncodedBenchmark",
    "EncodedExample",
    "LanguageModel",
    "Scorer",
    "Segment",
    "answer_logprobs",
    "capture_residuals",
    "check_lengths",
    "context_window",
    "cut_above",
    "encode_prompts",
    "greedy_continuations",
    "hook_point",
    "iter_answer_batches",
    "pad_right",
    "parse_hook_point",
    "patch_residual",
    "prefix_ids",
    "recording",
    "rebuild_context",
    "rerun_segment",
    "score_batch",
    "score_conditions",
    "shared_prefix",
    "stop_token_ids",
]
