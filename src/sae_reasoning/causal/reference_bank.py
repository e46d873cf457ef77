"""One benchmark's ablation references: accumulated from the clean residuals of its select
batches (BankBuilder), then packed into the means and the resample bank the hooks read
(BenchmarkReferences). What they hold and why: references.py's docstring.

The builder takes each batch's residual from whichever pass ran it: the references' own
clean pass (AblationReferences.build), or the attribution pass over the same batches, whose
probe leaves the forward value unchanged (selection.select_pass).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from sae_reasoning.scoring import AnswerBatch, EncodedBenchmark

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


class BankBuilder:
    """Sums, counts and resample bank of one benchmark's select examples, batch by batch."""

    def __init__(self, bench: EncodedBenchmark, sae, *, every: bool, exclude_first: bool):
        self.bench, self.sae = bench, sae
        self.every, self.exclude_first = every, exclude_first
        d_sae, d_model = sae.W_dec.shape
        dev = sae.W_dec.device
        kinds = TYPES if every else ("last_prompt", "answer")
        self.sums = {t: torch.zeros(d_sae, dtype=torch.float64, device=dev) for t in kinds}
        self.error_sums = {t: torch.zeros(d_model, dtype=torch.float64, device=dev) for t in kinds}
        self.counts = dict.fromkeys(kinds, 0)
        self.bank: dict[str, dict] = {t: {} for t in ("last_prompt", "answer", "question")}
        self._prefix_done = False
        self._like: torch.Tensor | None = None  # dtype and device of the residuals

    def _add(self, kind: str, x: torch.Tensor) -> None:  # x [n, d_model]: tokens of `kind`
        if len(x):
            x = x.to(self.sae.W_dec.dtype)
            f = self.sae.encode(x)
            self.sums[kind] += f.double().sum(0)
            self.error_sums[kind] += (x - self.sae.decode(f)).double().sum(0)
            self.counts[kind] += len(x)

    def _keep(self, positions: torch.Tensor) -> torch.Tensor:
        if self.exclude_first:
            return positions != 0
        return torch.ones_like(positions, dtype=torch.bool)

    @torch.no_grad()
    def add(self, batch: AnswerBatch, resid: torch.Tensor) -> None:
        """One of the benchmark's batches: `resid` [rows, S, d_model] is the clean residual
        after the layer on its answer pass; with `every`, the batch's contexts were built
        recording that layer (iter_answer_batches(record_layer=))."""
        resid = resid.detach()
        self._like = resid
        if self.every and batch.prefix is not None and not self._prefix_done:
            # The block is the same for every example: its mean once, counted once per example.
            p, n = batch.prefix, len(self.bench.examples)
            self._add("prefix", p.resid[0][self._keep(p.positions[0]) & p.mask[0].bool()])
            self.sums["prefix"] *= n
            self.error_sums["prefix"] *= n
            self.counts["prefix"] *= n
            self._prefix_done = True
        gold = batch.gold_rows()  # one per example, in the batch's example order
        resid, pos, alen = resid[gold], batch.answer_positions()[gold], batch.answer_len[gold]
        last_ok = self._keep(pos[:, 0])
        cols = torch.arange(resid.shape[1], device=resid.device)[None]
        self._add("last_prompt", resid[:, 0][last_ok])
        self._add("answer", resid[(cols >= 1) & (cols <= alen[:, None].to(cols.device))])
        for i, ex in enumerate(batch.examples):
            if bool(last_ok[i]):
                self.bank["last_prompt"][ex.id] = resid[i, :1]
            self.bank["answer"][ex.id] = resid[i, 1 : 1 + int(alen[i])]
        if self.every and batch.question is not None:
            self._add_questions(batch)

    def _add_questions(self, batch: AnswerBatch) -> None:
        """The batch's question tokens into the question mean, and into the bank from their end."""
        q = batch.question
        ok = self._keep(q.positions) & q.mask.bool()
        self._add("question", q.resid[ok])
        for i, ex in enumerate(batch.examples):
            h = int(q.mask[i].sum())
            # From the question's end: row o is the token o before the last question token.
            self.bank["question"][ex.id] = (q.resid[i, :h].flip(0), ok[i, :h].flip(0))

    def finish(self) -> BenchmarkReferences:
        ids = [e.id for e in self.bench.examples]
        like = self._like
        if like is None:
            raise ValueError(f"benchmark {self.bench.name!r}: no batch reached the references")
        packed = _pack(self.bank, ids, self.every, like.shape[-1], like.dtype, like.device)
        return BenchmarkReferences(
            self.bench.name, ids, self.sums, self.error_sums, self.counts, *packed
        )


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
