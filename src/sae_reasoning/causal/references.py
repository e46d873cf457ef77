"""What mean and resample ablation put in place of a feature: references from the select split.

Features are selected on the `select` split and their effects measured on `heldout`, so
the values an ablation substitutes come from `select` alone: the held-out examples are
never read. They are built from one clean pass of the model over the select examples (the
same cached passes as scoring, scoring.iter_answer_batches: their own, or the attribution
pass, selection.select_pass), with the SAE encoding the residual stream after the SAE's
layer, per benchmark and per *position type* (reference_bank.py accumulates them):

  prefix       the benchmark's few-shot block (the same tokens for all its examples)
  question     the example's own prompt tokens after the few-shot block, but the last
               (the question segment; e.g. "Question: ... ?\\nAnswer")
  last_prompt  the last prompt token (column 0 of the answer pass)
  answer       the gold answer's tokens (columns 1.. of the answer pass)

Position 0 (the attention sink, which score_conditions exempts with exclude_first) is
left out of every reference when exclude_first. prefix and question exist only for
positions="all", where the ablations act on them too.

mean      f'_S = the benchmark's mean feature vector over the select tokens of the
          position's type (answer: over every gold-answer token of every select example,
          all offsets pooled; prefix: over the block's tokens).
resample  f'_S = the features of a *donor*: another select example of the same benchmark,
          at the aligned position: last_prompt -> the donor's last prompt token; answer
          offset j (j-th answer token) -> the donor's gold-answer token j; question offset
          o from the question's end (prompts end in the same "...\\nAnswer:" shape) -> the
          donor's question token o from its end. Each recipient example has one seeded
          order of the other select examples of its benchmark (never itself, by id), drawn
          from (seed, benchmark, example id) alone, so a draw does not depend on the batch
          composition; at each aligned position the donor is the first in that order that
          has the position; where none has it (a longer answer or question than any select
          example), the nearest offset some donor has. Every answer row of an example (each
          choice candidate) gets the same donor values. prefix: the donor's few-shot block
          is the recipient's own, so the resampled value is the clean value itself
          (resample leaves the block unchanged).

The SAE error term x - x_hat(f(x)) gets the same references (splice.WithErrorAblated):
its mean over the same tokens, or the donor's error at the aligned position.

Storage, per benchmark: the mean feature and error vectors (4 x (d_sae + d_model) floats),
and, for resample, the clean residual (d_model values, not the d_sae features; in the
model's dtype, on its device) of every select example at each of its aligned positions:
at most examples x (1 + longest gold answer + [positions="all": longest question]) x
d_model values. The donors' features are encoded when the hook runs (one more SAE encode
of the pass's shape). For 60 examples, 10-token answers, 150-token questions and d_model
576 in bf16 that is at most 11 MB per benchmark; `max_examples` caps the examples per
benchmark.
"""

from __future__ import annotations

import torch

from sae_reasoning.causal.reference_bank import TYPES, BankBuilder, BenchmarkReferences
from sae_reasoning.scoring import (
    POSITIONS,
    SEGMENTS,
    AnswerBatch,
    EncodedBenchmark,
    iter_answer_batches,
    recording,
)

__all__ = ["TYPES", "AblationReferences", "BenchmarkReferences", "ReferenceCollector"]


class AblationReferences:
    """Per-benchmark, per-position-type mean feature vectors and a resample bank, from the
    select split (module docstring). Build with AblationReferences.build; FeatureAblation
    reads them through mean_at / donors_at for the segment the hook is running on."""

    def __init__(
        self,
        benchmarks: dict[str, BenchmarkReferences],
        *,
        layer: int,
        positions: str,
        exclude_first: bool,
        split: str | None,
    ):
        self.benchmarks = benchmarks
        self.layer = layer
        self.positions = positions
        self.exclude_first = exclude_first
        self.split = split

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        lm,
        sae,
        layer: int,
        benchmarks: list[EncodedBenchmark],
        *,
        batch_size: int = 16,
        positions: str = "answer",
        exclude_first: bool = True,
        split: str | None = "select",
        max_examples: int | None = None,
        progress: str | None = None,
    ) -> AblationReferences:
        """References from one clean pass over the `split` examples of `benchmarks` (the
        others are never run: pass the held-out ones too and nothing of them is read).

        positions: as score_conditions ("answer": last_prompt and answer; "all": also
        prefix and question). exclude_first: leave position 0 out (as score_conditions
        exempts it). max_examples: the first that many `split` examples per benchmark.
        """
        collect = ReferenceCollector(
            sae,
            layer,
            benchmarks,
            positions=positions,
            exclude_first=exclude_first,
            split=split,
            max_examples=max_examples,
        )
        record = layer if collect.every else None
        for batch in iter_answer_batches(lm, collect.benchmarks, batch_size, progress, record):
            with recording(lm.model, [layer], stop=False) as rec:
                batch.run(lm.model)
            collect.add(batch, rec[layer])
        return collect.done()

    # -- reading ----------------------------------------------------------------------------------

    def of(self, benchmark: str) -> BenchmarkReferences:
        if benchmark not in self.benchmarks:
            raise ValueError(
                f"no ablation references for benchmark {benchmark!r} (it has no "
                f"{self.split!r} examples); have {sorted(self.benchmarks)}"
            )
        return self.benchmarks[benchmark]

    def mean(self, benchmark: str, kind: str, *, error: bool = False) -> torch.Tensor:
        """[d_sae] mean features of `benchmark`'s select tokens of type `kind` (TYPES); with
        error=True, [d_model] mean of the SAE error term x - x_hat(f(x)) there."""
        return self.of(benchmark).mean(kind, error=error)

    def pooled_mean(self) -> torch.Tensor:
        """[d_sae] one mean over every benchmark and every position type built: each select
        example's sequence counted whole (its few-shot block too, with positions="all").
        For the attribution estimate of mean ablation (one constant per feature)."""
        refs = list(self.benchmarks.values())
        total = sum(r.sums[t] for r in refs for t in r.sums)
        return (total / sum(r.counts[t] for r in refs for t in r.counts)).float().cpu()

    def summary(self) -> dict:
        """What the references are made of, for the report (JSON-able)."""
        return {
            "split": self.split,
            "layer": self.layer,
            "positions": self.positions,
            "first_position_excluded": self.exclude_first,
            "benchmarks": {
                b: {"n_examples": len(r.ids), "tokens": dict(r.counts)}
                for b, r in self.benchmarks.items()
            },
        }

    def mean_at(
        self, batch: AnswerBatch, segment: str, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The mean of `features` at each position of the pass `segment` of `batch`, shaped to
        broadcast against its features [rows, S, |features|]. features=None: the mean SAE
        error term instead, to broadcast against the residual [rows, S, d_model]."""
        ref = self.of(_benchmark(batch))

        def mean(kind):
            if features is None:
                return ref.mean(kind, error=True)
            m = ref.mean(kind)
            return m[torch.as_tensor(features, dtype=torch.long, device=m.device)]

        if segment == "answer":
            target = mean("answer").expand(batch.ids.shape[1], -1).clone()
            target[0] = mean("last_prompt")
            return target[None]
        if segment in ("prefix", "question"):
            return mean(segment)[None, None]
        raise ValueError(f"segment {segment!r}: expected one of {SEGMENTS}")

    def donors_at(
        self, batch: AnswerBatch, segment: str, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(donor residuals [rows, S, d_model], missing [rows, S] bool) aligned with the pass
        `segment` of `batch`; None for the few-shot block (its donor value is the clean one)."""
        ref = self.of(_benchmark(batch))
        if segment == "prefix":
            if "prefix" not in ref.counts:
                ref.mean("prefix")  # the error for references built for positions='answer'
            return None
        # Index arithmetic on the host (small tensors); one copy of the indices to the device.
        picks = [ref.picks(e.id, seed) for e in batch.examples]
        if segment == "answer":
            width = batch.ids.shape[1]
            a = ref.slots["answer"].shape[1]
            cols = torch.arange(width - 1).clamp(max=a - 1)
            per_example = torch.stack(
                [torch.cat([p["last_prompt"], p["answer"][cols]]) for p in picks]
            )
            idx = per_example[batch.pair_example.cpu()]
        elif segment == "question":
            if "question" not in ref.slots:
                ref.mean("question")
            seg = batch.question
            q = ref.slots["question"].shape[1]
            lengths = seg.mask.sum(1).cpu()
            cols = torch.arange(seg.ids.shape[1])
            from_end = (lengths[:, None] - 1 - cols[None]).clamp(min=0, max=q - 1)  # pads: offset 0
            idx = torch.stack([p["question"][from_end[i]] for i, p in enumerate(picks)])
        else:
            raise ValueError(f"segment {segment!r}: expected one of {SEGMENTS}")
        idx = idx.to(ref.resid.device)
        missing = idx < 0
        return ref.resid[idx.clamp(min=0)], missing


def _benchmark(batch: AnswerBatch) -> str:
    return batch.examples[0].benchmark


class ReferenceCollector:
    """AblationReferences from batches that some pass runs: `benchmarks` holds the examples to
    run, in the order to run them (each benchmark's `split` examples by prompts row, at most
    `max_examples`); add(batch, residual after the layer on its answer pass) for each batch
    of iter_answer_batches over them (record_layer=layer when `every`); then done()."""

    def __init__(
        self,
        sae,
        layer: int,
        benchmarks: list[EncodedBenchmark],
        *,
        positions: str = "answer",
        exclude_first: bool = True,
        split: str | None = "select",
        max_examples: int | None = None,
    ):
        if positions not in POSITIONS:
            raise ValueError(f"positions {positions!r}: expected one of {POSITIONS}")
        self.every = positions == "all"
        self.benchmarks: list[EncodedBenchmark] = []
        self._builders: dict[str, BankBuilder] = {}
        for bench in benchmarks:
            chosen = [e for e in bench.examples if split is None or e.split == split]
            chosen = sorted(chosen, key=lambda e: e.row)[:max_examples]
            if chosen:
                sub = EncodedBenchmark(bench.name, bench.prefix, chosen)
                self.benchmarks.append(sub)
                self._builders[bench.name] = BankBuilder(
                    sub, sae, every=self.every, exclude_first=exclude_first
                )
        if not self.benchmarks:
            raise ValueError(f"no {split!r} examples to build ablation references from")
        self._where = {
            "layer": layer,
            "positions": positions,
            "exclude_first": exclude_first,
            "split": split,
        }

    def add(self, batch: AnswerBatch, resid: torch.Tensor) -> None:
        self._builders[batch.examples[0].benchmark].add(batch, resid)

    def done(self) -> AblationReferences:
        refs = {name: b.finish() for name, b in self._builders.items()}
        return AblationReferences(refs, **self._where)
