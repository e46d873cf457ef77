"""What mean and resample ablation put in place of a feature: references from the select split.

Features are selected on the `select` split and their effects measured on `heldout`, so
the values an ablation substitutes come from `select` alone: the held-out examples are
never read. They are built by one clean pass of the model over the select examples (the
same cached passes as scoring, scoring.iter_answer_batches), with the SAE encoding the
residual stream after the SAE's layer, per benchmark and per *position type*:

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

import hashlib
from dataclasses import dataclass, field

import torch

from sae_reasoning.scoring import (
    POSITIONS,
    SEGMENTS,
    AnswerBatch,
    EncodedBenchmark,
    iter_answer_batches,
    recording,
)

TYPES = ("prefix", "question", "last_prompt", "answer")


@dataclass
class BenchmarkReferences:
    """One benchmark's references (see the module docstring)."""

    name: str
    ids: list[str]  # select example ids, in prompts-table order
    sums: dict[str, torch.Tensor]  # type -> [d_sae] float64 sum of features (prefix: x examples)
    error_sums: dict[
        str, torch.Tensor
    ]  # type -> [d_model] float64 sum of SAE errors x - x_hat(f(x))
    counts: dict[str, int]  # type -> tokens summed (prefix: block tokens x examples)
    resid: torch.Tensor  # [M, d_model] clean residuals of the bank's slots
    slots: dict[str, torch.Tensor]  # type -> [N, O] index into resid, -1 where none (on the CPU)
    means: dict[str, torch.Tensor] = field(default_factory=dict)  # type -> [d_sae] float32
    error_means: dict[str, torch.Tensor] = field(default_factory=dict)  # type -> [d_model] float32

    def __post_init__(self):
        self.means = {
            t: (self.sums[t] / self.counts[t]).float() for t in self.sums if self.counts[t]
        }
        self.error_means = {
            t: (self.error_sums[t] / self.counts[t]).float() for t in self.sums if self.counts[t]
        }

    def mean(self, kind: str, *, error: bool = False) -> torch.Tensor:
        """[d_sae] mean features (error: [d_model] mean SAE error) of the select tokens of type
        `kind`."""
        if kind not in self.means:
            if kind in self.counts:
                raise ValueError(
                    f"benchmark {self.name!r}: no select tokens of type {kind!r} for a mean"
                )
            raise ValueError(
                f"benchmark {self.name!r}: no {kind!r} reference; the references were built "
                f"for positions='answer' (build them with positions='all')"
            )
        return (self.error_means if error else self.means)[kind]

    def picks(self, example_id: str, seed: int) -> dict[str, torch.Tensor]:
        """type -> [O] slot (index into resid) the recipient `example_id` gets at each offset.

        -1 where no select example has that position at all (only for position 0 when
        exclude_first; the caller keeps the clean value there)."""
        others = [k for k, i in enumerate(self.ids) if i != example_id]
        if not others:
            raise ValueError(
                f"resample ablation: benchmark {self.name!r} has no select example other than "
                f"{example_id!r} to draw from"
            )
        gen = torch.Generator().manual_seed(_stable_seed(seed, self.name, example_id))
        order = torch.tensor(others)[torch.randperm(len(others), generator=gen)]
        out = {}
        for kind, table in self.slots.items():
            cand = table[order]  # [D, O] in draw order
            has = cand >= 0
            first = has.int().argmax(0)  # first donor with the offset
            pick = cand.gather(0, first[None])[0]  # [O], -1 where no donor has it
            avail = torch.nonzero(has.any(0)).flatten()
            if len(avail) and len(avail) < len(pick):
                offs = torch.arange(len(pick), device=pick.device)
                nearest = avail[
                    (offs[:, None] - avail[None]).abs().argmin(1)
                ]  # ties: the smaller offset
                pick = pick[nearest]
            out[kind] = pick
        return out


def _stable_seed(seed: int, benchmark: str, example_id: str) -> int:
    digest = hashlib.blake2b(
        f"{seed}\x00{benchmark}\x00{example_id}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


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
        if positions not in POSITIONS:
            raise ValueError(f"positions {positions!r}: expected one of {POSITIONS}")
        every = positions == "all"
        out = {}
        for bench in benchmarks:
            chosen = [e for e in bench.examples if split is None or e.split == split]
            chosen = sorted(chosen, key=lambda e: e.row)[:max_examples]
            if not chosen:
                continue
            sub = EncodedBenchmark(bench.name, bench.prefix, chosen)
            out[bench.name] = _build_benchmark(
                lm, sae, layer, sub, batch_size, every, exclude_first, progress
            )
        if not out:
            raise ValueError(f"no {split!r} examples to build ablation references from")
        return cls(out, layer=layer, positions=positions, exclude_first=exclude_first, split=split)

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


def _build_benchmark(
    lm, sae, layer, bench: EncodedBenchmark, batch_size, every, exclude_first, progress
):
    d_sae = sae.W_dec.shape[0]
    sums = {
        t: torch.zeros(d_sae, dtype=torch.float64, device=sae.W_dec.device)
        for t in (TYPES if every else ("last_prompt", "answer"))
    }
    error_sums = {
        t: torch.zeros(sae.W_dec.shape[1], dtype=torch.float64, device=sae.W_dec.device)
        for t in sums
    }
    counts = dict.fromkeys(sums, 0)
    bank: dict[str, dict[str, torch.Tensor]] = {
        t: {} for t in ("last_prompt", "answer", "question")
    }

    def add(kind, x):  # x [n, d_model]: tokens of type `kind`
        if len(x):
            x = x.to(sae.W_dec.dtype)
            f = sae.encode(x)
            sums[kind] += f.double().sum(0)
            error_sums[kind] += (x - sae.decode(f)).double().sum(0)
            counts[kind] += len(x)

    def keep(positions):
        return positions != 0 if exclude_first else torch.ones_like(positions, dtype=torch.bool)

    n = len(bench.examples)
    for batch in iter_answer_batches(
        lm, [bench], batch_size, progress, record_layer=layer if every else None
    ):
        if every and batch.prefix is not None and batch.index == 0:
            # The block is the same for every example: its mean once, counted once per example.
            p = batch.prefix
            add("prefix", p.resid[0][keep(p.positions[0]) & p.mask[0].bool()])
            sums["prefix"] *= n
            error_sums["prefix"] *= n
            counts["prefix"] *= n
        with recording(lm.model, [layer], stop=False) as rec:
            batch.run(lm.model)
        gold = batch.gold_rows()  # one per example, in the batch's example order
        resid, pos, alen = rec[layer][gold], batch.answer_positions()[gold], batch.answer_len[gold]
        last_ok = keep(pos[:, 0])
        cols = torch.arange(resid.shape[1], device=resid.device)[None]
        add("last_prompt", resid[:, 0][last_ok])
        add("answer", resid[(cols >= 1) & (cols <= alen[:, None].to(cols.device))])
        for i, ex in enumerate(batch.examples):
            if bool(last_ok[i]):
                bank["last_prompt"][ex.id] = resid[i, :1]
            bank["answer"][ex.id] = resid[i, 1 : 1 + int(alen[i])]
        if every and batch.question is not None:
            _add_questions(batch, keep, add, bank)
    ids = [e.id for e in bench.examples]
    packed = _pack(bank, ids, every, lm.d_model, resid.dtype, resid.device)
    return BenchmarkReferences(bench.name, ids, sums, error_sums, counts, *packed)


def _add_questions(batch: AnswerBatch, keep, add, bank) -> None:
    """The batch's question tokens into the question mean, and into the bank from their end."""
    q = batch.question
    ok = keep(q.positions) & q.mask.bool()
    add("question", q.resid[ok])
    for i, ex in enumerate(batch.examples):
        h = int(q.mask[i].sum())
        # From the question's end: row o is the token o before the last question token.
        bank["question"][ex.id] = (q.resid[i, :h].flip(0), ok[i, :h].flip(0))


def _pack(bank, ids, every, d_model, dtype, device):
    """One [M, d_model] tensor of every stored residual, and per type an [N, O] slot table."""
    chunks, slots, m = [], {}, 0
    for kind in ("last_prompt", "answer", "question") if every else ("last_prompt", "answer"):
        entries = bank[kind]
        width = max([len(v[0] if isinstance(v, tuple) else v) for v in entries.values()], default=1)
        table = torch.full((len(ids), max(width, 1)), -1, dtype=torch.long)
        for k, ex_id in enumerate(ids):
            if ex_id not in entries:
                continue
            v = entries[ex_id]
            rows, ok = (
                v
                if isinstance(v, tuple)
                else (v, torch.ones(len(v), dtype=torch.bool, device=v.device))
            )
            table[k, : len(rows)] = torch.where(ok.cpu(), torch.arange(m, m + len(rows)), -1)
            chunks.append(rows)
            m += len(rows)
        slots[kind] = table
    resid = (
        torch.cat(chunks).to(dtype)
        if chunks
        else torch.zeros((0, d_model), dtype=dtype, device=device)
    )
    return resid, slots
