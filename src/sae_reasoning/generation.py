"""The model's own worked solutions: greedy generation, and the final answer they state.

Where a prompt shows worked solutions (prompts table: ``prompt_format ==
"worked_solution"``), accuracy is that of the answer the model reaches when it writes its
own solution: it continues ``generation_prompt`` (few-shot block + question, up to
``Answer:``), and the answer is what it writes after the answer marker (``#### 42``),
else the last number it writes (``benchmarks.answers.extract_answer``), compared with the
gold answer by ``benchmarks.answers.answers_match``.

Generation is transformers' own ``model.generate``: greedy, with its KV cache, batched
over length-sorted prompts with left padding. A row stops at the first stop string (by
default the start of a next few-shot block, ``"\\n\\nQuestion:"``), at EOS, or after
``max_new_tokens`` new tokens; the text returned ends before the stop string. Usable
from a notebook::

    from sae_reasoning.generation import GenerationSettings, solve
    solved = solve(lm, prompts[prompts.prompt_format == "worked_solution"], GenerationSettings())
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from sae_reasoning.benchmarks.answers import answers_match, extract_answer
from sae_reasoning.benchmarks.parsing import ANSWER_MARKER

log = logging.getLogger(__name__)

DEFAULT_STOP = ("\n\nQuestion:",)
SOLVED_COLUMNS = ["row", "generated", "extracted_answer", "correct", "generated_tokens"]


@dataclass(frozen=True)
class GenerationSettings:
    """How solutions are generated (parameters ``capture.solution_generation``)."""

    max_new_tokens: int = 320  # budget of new tokens per solution
    stop: tuple[str, ...] = DEFAULT_STOP  # a row ends at the first of these (not included)
    batch_size: int = 8  # prompts per generate call
    answer_marker: str = ANSWER_MARKER  # the final answer follows it in a solution

    def __post_init__(self) -> None:
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(self.stop)}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> GenerationSettings:
        """From a parameter block: ``max_new_tokens``, ``stop`` (a string or a list; null or
        [] for none), ``batch_size``, ``answer_marker``; missing keys take the defaults."""
        params = dict(params or {})
        unknown = set(params) - {"max_new_tokens", "stop", "batch_size", "answer_marker"}
        if unknown:
            raise ValueError(f"unknown solution-generation setting(s) {sorted(unknown)}")
        stop = params.get("stop", DEFAULT_STOP)
        stop = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
        return cls(
            max_new_tokens=int(params.get("max_new_tokens", cls.max_new_tokens)),
            stop=stop,
            batch_size=int(params.get("batch_size", cls.batch_size)),
            answer_marker=str(params.get("answer_marker", cls.answer_marker)),
        )

    def key(self) -> dict[str, Any]:
        """The settings that decide the generated text, for fingerprints (not batch_size)."""
        key = asdict(self)
        key.pop("batch_size")
        key["stop"] = list(self.stop)
        return key


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first occurrence of any stop string, and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _context_window(config) -> int | None:
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def _left_padded(encoded: list[list[int]], chunk: list[int], width: int, pad: int):
    """(input_ids, attention_mask) of a batch, left padded: every row ends at the last column."""
    ids = torch.full((len(chunk), width), pad, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for r, i in enumerate(chunk):
        if encoded[i]:
            ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[r, width - len(encoded[i]) :] = 1
    return ids, mask


def _new_tokens(tokens: list[int], eos: int | None, pad: int) -> list[int]:
    """A row's generated tokens, up to EOS and without the filler after a row that stopped
    early."""
    if eos is not None and eos in tokens:
        tokens = tokens[: tokens.index(eos)]
    while tokens and tokens[-1] == pad:
        tokens.pop()
    return tokens


def generate(
    lm,
    prompts: Sequence[str],
    settings: GenerationSettings | None = None,
    progress: str | None = None,
) -> list[tuple[str, int]]:
    """Greedy continuation of each prompt: ``(text, n_tokens)``, text cut before the stop.

    ``lm``: a loaded model (``models.loading.LanguageModel``: ``.model``, ``.tokenizer``).
    Prompts are tokenized as the scoring code tokenizes a prompt's start (with the
    tokenizer's special tokens, e.g. BOS). A row whose prompt plus budget exceeds the
    model's context gets the budget that fits; a prompt that alone fills it is an error.
    """
    settings = settings or GenerationSettings()
    model, tok = lm.model, lm.tokenizer
    device = next(model.parameters()).device
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    encoded = [list(tok(p)["input_ids"]) for p in prompts]
    limit = _context_window(model.config)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[tuple[str, int] | None] = [None] * len(encoded)
    stop = list(settings.stop)
    bar = tqdm(total=len(order), desc=progress, unit="ex", disable=progress is None)
    t0, n_new = time.time(), 0
    for start in range(0, len(order), settings.batch_size):
        chunk = order[start : start + settings.batch_size]
        width = max(1, max(len(encoded[i]) for i in chunk))
        budget = int(settings.max_new_tokens)
        if limit:
            if width >= limit:
                raise ValueError(
                    f"{getattr(lm, 'name', 'model')}: a generation prompt is "
                    f"{width} tokens, the model's whole context ({limit}); use "
                    "fewer shots"
                )
            budget = min(budget, limit - width)
        ids, mask = _left_padded(encoded, chunk, width, pad)
        with torch.no_grad():
            result = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=budget,
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                eos_token_id=eos,
                stop_strings=stop or None,
                tokenizer=tok if stop else None,
            )
        for r, i in enumerate(chunk):
            tokens = _new_tokens(result[r, width:].tolist(), eos, pad)
            text, _ = cut_at_stop(tok.decode(tokens), stop)
            out[i] = (text, len(tokens))
            n_new += len(tokens)
        bar.update(len(chunk))
    bar.close()
    if encoded:
        log.info(
            "generated %d tokens for %d prompts in %.1f s", n_new, len(encoded), time.time() - t0
        )
    return out  # type: ignore[return-value]


def solve(
    lm, table: pd.DataFrame, settings: GenerationSettings | None = None, progress: str | None = None
) -> pd.DataFrame:
    """The model's own solution of each row of a prompts table, and whether it is right.

    ``table`` needs ``generation_prompt``, ``answer`` and ``answer_type``. Returns
    ``SOLVED_COLUMNS``, one row per table row in its order: ``row`` (position in
    ``table``), ``generated`` (the solution, cut before the stop string),
    ``extracted_answer`` (None if it states none), ``correct`` and ``generated_tokens``.
    """
    settings = settings or GenerationSettings()
    missing = {"generation_prompt", "answer", "answer_type"} - set(table.columns)
    if missing:
        raise ValueError(
            f"prompts table lacks columns {sorted(missing)} (rebuild it with data_loading)"
        )
    table = table.reset_index(drop=True)
    texts = generate(lm, table["generation_prompt"].tolist(), settings, progress)
    extracted = [
        extract_answer(text, answer_type, settings.answer_marker)
        for (text, _), answer_type in zip(texts, table["answer_type"], strict=True)
    ]
    return pd.DataFrame(
        {
            "row": range(len(table)),
            "generated": pd.Series([text for text, _ in texts], dtype=object),
            "extracted_answer": pd.Series(extracted, dtype=object),  # None where none is stated
            "correct": [
                e is not None and answers_match(e, a, t)
                for e, a, t in zip(extracted, table["answer"], table["answer_type"], strict=True)
            ],
            "generated_tokens": [n for _, n in texts],
        },
        columns=SOLVED_COLUMNS,
    )
