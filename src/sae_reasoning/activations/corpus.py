"""The SAE training corpus: text rows cut into fixed-length token rows and captured through
the same store as the benchmark activations (CaptureJob: shards, manifest, fingerprint
reuse, resume), into `<root>/corpus/<hook point>/`.

Rows follow SAELens's `context_size` convention: texts are tokenised, joined with a
separator token (EOS, else BOS: a document boundary as in pre-training) and cut into rows
of `context_tokens` tokens, mid-document where a text is longer; capture stops at
`max_tokens` stored tokens, so a streamed corpus is read only up to the budget. A row
starts as the benchmark prompts start: with whatever the tokenizer itself prepends (BOS
for Llama/Gemma tokenizers, nothing for SmolLM2 and GPT-2). SAE training then sees the
positions the model sees in the benchmarks; that start token runs inline and is not stored
(as the benchmarks' shared block), and position 0, whose residual norm is massive in many
models, is left out of training by the massive-activation rule either way.

Corpus rows whose question is an evaluation example's question are dropped (counted,
logged): held-out evaluation stays on examples the SAE never trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sae_reasoning.activations.capture import CAPTURE_VERSION, CaptureJob
from sae_reasoning.activations.tokens import CHUNK, PackedBenchmark
from sae_reasoning.models.loading import LanguageModel
from sae_reasoning.scoring import context_window, prefix_ids

log = logging.getLogger(__name__)
CORPUS = "corpus"  # the folder name, and the source name in sae_training.sources
SHINGLE_WORDS = 8  # words of an evaluation question looked up in free text


def _norm(text: str) -> str:
    return " ".join(str(text).split()).lower()


class EvaluationFilter:
    """Which corpus rows repeat an evaluation question. Rows with a `question` column match
    it exactly (whitespace and case aside); free text matches when it contains a whole
    question, found through the question's first SHINGLE_WORDS words (O(words) per text)."""

    def __init__(self, questions: Iterable[str]):
        self.questions = sorted({_norm(q) for q in questions if _norm(q)})
        self._by_head: dict[tuple[int, str], list[str]] = {}
        for q in self.questions:
            words = q.split(" ")
            n = min(SHINGLE_WORDS, len(words))
            self._by_head.setdefault((n, " ".join(words[:n])), []).append(q)
        self._sizes = sorted({n for n, _ in self._by_head})
        self.n_dropped = 0

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.questions).encode()).hexdigest()[:16]

    def excludes(self, question: str | None, text: str) -> bool:
        hit = _norm(question) in self.questions if question is not None else self._contains(text)
        self.n_dropped += hit
        return hit

    def _contains(self, text: str) -> bool:
        t = _norm(text)
        words = t.split(" ")
        for n in self._sizes:
            for i in range(len(words) - n + 1):
                for q in self._by_head.get((n, " ".join(words[i : i + n])), ()):
                    if q in t:
                        return True
        return False


@dataclass
class CorpusSource:
    """Text rows of `sae_corpus` as the capture reads them.

    rows: a DataFrame, or any iterable of dict rows (a streamed `datasets` source,
        hf_datasets.StreamedRows, whose `identity` stands in for its content in the
        fingerprint: a streamed corpus is never read just to decide reuse).
    text_column: the text of a row; rows without it but with `question` and `answer`
        (the default reasoning-gym corpus) are written in the benchmark prompt format.
    """

    rows: Any
    text_column: str = "text"
    question_prefix: str = "Question: "
    answer_prefix: str = "Answer:"
    exclude: EvaluationFilter = field(default_factory=lambda: EvaluationFilter([]))

    def _rows(self) -> Iterator[tuple[Any, dict]]:
        if isinstance(self.rows, pd.DataFrame):
            yield from zip(self.rows.index, self.rows.to_dict("records"))
        else:
            yield from enumerate(self.rows)

    def texts(self) -> Iterator[str]:
        """Texts in corpus order, evaluation questions left out (counted in exclude.n_dropped)."""
        self.exclude.n_dropped = 0
        for i, row in self._rows():
            if self.text_column in row:
                text, question = row[self.text_column], row.get("question")
            elif "question" in row and "answer" in row:
                question = row["question"]
                text = f"{self.question_prefix}{question}\n{self.answer_prefix} {row['answer']}"
            else:
                raise ValueError(
                    f"sae_corpus row {i}: no {self.text_column!r} column (capture.corpus."
                    f"text_column), nor question and answer; columns: {sorted(row)}"
                )
            if not isinstance(text, str) or not text.strip():
                raise ValueError(
                    f"sae_corpus row {i}: empty or non-text {self.text_column!r}: {text!r}"
                )
            if not self.exclude.excludes(question, text):
                yield text

    def identity(self) -> dict:
        """What the capture fingerprints: the content (tables), or the streamed source's
        arguments; with the evaluation questions left out."""
        stated = getattr(self.rows, "identity", None)
        if stated is not None:
            content = {"stream": stated}
        else:
            h = hashlib.sha256()
            for text in self.texts():
                h.update(text.encode() + b"\0")
            content = {"texts": h.hexdigest()}
            if self.exclude.n_dropped:
                log.info(
                    "sae_corpus: %d row(s) dropped: their question is an evaluation example's",
                    self.exclude.n_dropped,
                )
        return {
            **content,
            "text_column": self.text_column,
            "format": [self.question_prefix, self.answer_prefix],
            "excluded_questions": self.exclude.digest(),
        }


def pack_corpus(
    tokenizer,
    texts: Iterable[str],
    context_tokens: int,
    max_tokens: int | None,
    prefix: list[int],
    separator: int | None,
) -> PackedBenchmark:
    """Texts joined by `separator` and cut into rows of context_tokens - len(prefix) stored
    tokens (the row's `prefix` runs first, unstored), at most max_tokens in all."""
    width = context_tokens - len(prefix)
    if width < 1:
        raise ValueError(
            f"capture.corpus.context_tokens={context_tokens} leaves no room after the "
            f"{len(prefix)} start token(s)"
        )
    parts, total, pending = [], 0, []
    budget = max_tokens if max_tokens is not None else float("inf")

    def flush():
        nonlocal total, pending
        ids = tokenizer(pending, add_special_tokens=False)["input_ids"]
        sep = [separator] if separator is not None else []
        flat = np.fromiter((t for seq in ids for t in (*seq, *sep)), dtype=np.int32)
        parts.append(flat[: max(0, int(min(budget - total, len(flat))))])
        total += len(parts[-1])
        pending = []

    for text in texts:
        pending.append(text)
        if len(pending) == CHUNK:
            flush()
            if total >= budget:
                break
    if pending and total < budget:
        flush()
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    n_rows = -(-len(ids) // width)
    offsets = np.minimum(np.arange(n_rows + 1, dtype=np.int64) * width, len(ids))
    return PackedBenchmark(CORPUS, list(prefix), np.arange(n_rows, dtype=np.int64), ids, offsets)


@dataclass
class CorpusCaptureJob(CaptureJob):
    """Capture of the SAE training corpus (no few-shot block): one folder, `corpus`."""

    corpus: CorpusSource | None = None
    context_tokens: int = 512
    max_tokens: int | None = None

    TOKENS = "SAE training corpus rows of context_tokens tokens (texts joined by a separator token)"
    LABEL = "capture corpus"

    def __post_init__(self):
        self.extra = {
            **self.extra,
            "context_tokens": self.context_tokens,
            "max_tokens": self.max_tokens,
            "context_size": self.context_tokens,
        }

    def names(self) -> list[str]:
        return [CORPUS]

    def _validate(self) -> None:
        if self.corpus is None:
            raise ValueError(f"capture {self.model.name}: no corpus given")
        if self.context_tokens < 2:
            raise ValueError(
                f"capture.corpus.context_tokens must be >= 2, got {self.context_tokens}"
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(
                f"capture.corpus.max_tokens must be >= 1 or null, got {self.max_tokens}"
            )

    def fingerprint(self) -> str:
        key = {
            "version": CAPTURE_VERSION,
            "kind": CORPUS,
            "model": repr(self.model.spec),
            "corpus": self.corpus.identity(),
            "context_tokens": self.context_tokens,
            "max_tokens": self.max_tokens,
            "layers": sorted(self.layers),
            "dtype": self.dtype,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]

    def _pack(self, lm: LanguageModel, todo: list[str]) -> list[PackedBenchmark]:
        limit = context_window(lm.model.config)
        if limit and self.context_tokens > limit:
            raise ValueError(
                f"{self.model.name}: capture.corpus.context_tokens={self.context_tokens} is "
                f"over the model's context of {limit} tokens"
            )
        tok = lm.tokenizer
        separator = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
        packed = pack_corpus(
            tok,
            self.corpus.texts(),
            self.context_tokens,
            self.max_tokens,
            prefix_ids(tok, ""),
            separator,
        )
        if len(packed.ids) == 0:
            raise ValueError(
                f"capture {self.model.name}: the SAE corpus (sae_corpus) has no text left "
                f"after dropping {self.corpus.exclude.n_dropped} evaluation question(s)"
            )
        log.info(
            "corpus %s: %d tokens in %d rows of %d "
            "(%d corpus row(s) dropped: evaluation questions)",
            self.model.name,
            len(packed.ids),
            len(packed),
            self.context_tokens,
            self.corpus.exclude.n_dropped,
        )
        return [packed]
