"""Token-injection control: does a "reasoning" feature fire on its tokens in any context?

Ma, Liang, Chen & Sojoudi, "Do Sparse Autoencoders Identify Reasoning Features in Language
Models?" (arXiv:2601.05679) find that most SAE features selected as "reasoning" features fire
on a few particular tokens whatever the context: injecting those tokens into non-reasoning
text elicits the feature as strongly as the reasoning benchmark did. This module runs that
control for the features we report.

For each feature: take the distinct tokens of its top-activating benchmark contexts
(`contexts.top_activating_contexts`), insert each one at a seeded word boundary of plain
prose sentences (`neutral_text.txt`: weather, cooking, travel, history; no numbers, no
questions), run the model up to the SAE's layer, encode with the SAE and read the feature at
the injected token. Survival = mean injected activation / mean benchmark activation at those
tokens; a feature whose activation survives (>= threshold) is labelled token-driven.

Deterministic (insertion slots depend only on seed, sentence and token), batched, no grad,
on the model's device, and memory-bounded (batch_size sequences of at most MAX_TOKENS).
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import torch

from sae_reasoning.scoring import capture_residuals

MAX_TOKENS = 128  # neutral passages are cut to this many tokens: bounds batch memory
ENCODE_ROWS = 1024  # rows per SAE encode for the baseline: bounds the [rows, d_sae] block
NO_CONTEXTS = "no benchmark contexts: the feature never fired on the benchmark tokens"


def neutral_corpus() -> list[str]:
    """The shipped neutral prose, one passage per item (`causal/neutral_text.txt`)."""
    text = files("sae_reasoning.causal").joinpath("neutral_text.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@torch.no_grad()
def token_injection(
    lm,
    sae,
    layer: int,
    contexts: dict[int, list[dict]],
    *,
    corpus: list[str] | None = None,
    n_tokens: int = 3,
    n_sentences: int = 32,
    threshold: float = 0.5,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[int, dict]:
    """feature -> {tokens, benchmark_activation, injected_activation, neutral_baseline, survival,
    token_driven, n_injections} (token_driven None, with a `reason`, for a feature without
    contexts).

    benchmark_activation is the mean over the top contexts whose token is one of the `n_tokens`
    injected; injected_activation the mean over every (token, sentence) injection;
    neutral_baseline the mean over all positions but the first of the uninjected sentences.

    threshold 0.5: a feature that keeps at least half its benchmark activation on its tokens in
    unrelated prose is explained more by those tokens than by the reasoning around them.
    """
    if not contexts:
        return {}
    tok = lm.tokenizer
    corpus = corpus if corpus is not None else neutral_corpus()
    sentences = neutral_sentences(tok, corpus, n_sentences, seed)
    feats = [int(f) for f in contexts]
    triggers = {f: _trigger_tokens(contexts[f], tok, n_tokens) for f in feats}

    # One injected sequence per (token, sentence), shared by every feature with that token.
    seqs, at, index = [], [], {}
    for ids_t in dict.fromkeys(t for f in feats for t in triggers[f]):
        for si, (ids, slots) in enumerate(sentences):
            p = slots[_slot(seed, si, ids_t, len(slots))]
            index[ids_t, si] = len(seqs)
            seqs.append(ids[:p] + list(ids_t) + ids[p:])
            at.append(p + len(ids_t) - 1)  # a multi-piece token is read at its last piece
    injected = _features_at(lm, sae, layer, seqs, at, feats, batch_size)
    baseline = _mean_features(lm, sae, layer, [ids for ids, _ in sentences], feats, batch_size)

    return {
        f: _summary(
            triggers[f],
            injected[:, col],
            index,
            len(sentences),
            float(baseline[col]),
            tok,
            threshold,
        )
        for col, f in enumerate(feats)
    }


def _summary(
    trig: dict,
    injected: torch.Tensor,
    index: dict,
    n_sent: int,
    baseline: float,
    tok,
    threshold: float,
) -> dict:
    if not trig:
        return {
            "tokens": [],
            "benchmark_activation": None,
            "injected_activation": None,
            "neutral_baseline": baseline,
            "survival": None,
            "token_driven": None,
            "n_injections": 0,
            "reason": NO_CONTEXTS,
        }
    rows = [index[ids_t, si] for ids_t in trig for si in range(n_sent)]
    bench = float(np.mean([a for acts in trig.values() for a in acts]))
    inj = float(injected[rows].mean())
    # Top contexts only list activations > 0, so bench > 0 and the ratio is finite.
    survival = inj / bench
    return {
        "tokens": [tok.decode(list(ids_t)) for ids_t in trig],
        "benchmark_activation": bench,
        "injected_activation": inj,
        "neutral_baseline": baseline,
        "survival": survival,
        "token_driven": bool(survival >= threshold),
        "n_injections": len(rows),
    }


def _trigger_tokens(
    entries: list[dict], tokenizer, n_tokens: int
) -> dict[tuple[int, ...], list[float]]:
    """The feature's `n_tokens` strongest distinct tokens -> their benchmark activations."""
    found: dict[tuple[int, ...], list[float]] = {}
    for e in sorted(entries, key=lambda e: -e["activation"]):
        ids = _token_ids(e, tokenizer)
        if not ids or e["activation"] <= 0:
            continue
        if ids in found or len(found) < n_tokens:
            found.setdefault(ids, []).append(float(e["activation"]))
    return found


def _token_ids(entry: dict, tokenizer) -> tuple[int, ...]:
    # The stored id is exact; re-encoding the decoded string is a fallback that can differ
    # (e.g. SentencePiece decode drops a word's leading space) and may give several pieces.
    if entry.get("token_id") is not None:
        return (int(entry["token_id"]),)
    return tuple(tokenizer(entry["token"], add_special_tokens=False)["input_ids"])


def neutral_sentences(
    tokenizer, corpus: list[str], n: int, seed: int
) -> list[tuple[list[int], list[int]]]:
    """Up to n seeded passages as (ids, word-start token indices where a token may be inserted)."""
    usable = []
    for text in corpus:
        ids, slots = _word_starts(tokenizer, text)
        if slots:
            usable.append((ids, slots))
    if not usable:
        raise ValueError("token injection: no neutral passage has two words to insert between")
    order = np.random.default_rng(seed).permutation(len(usable))[:n]
    return [usable[i] for i in sorted(order)]


def _word_starts(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Token ids of `text` (cut to MAX_TOKENS) and the indices of tokens that start a word
    after the first: inserting there keeps words whole and never lands on position 0 (the
    attention sink, whose outsized norms top contexts exclude too)."""
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
    except NotImplementedError:  # slow tokenizers have no offsets: any slot but 0
        ids = list(tokenizer(text)["input_ids"])[:MAX_TOKENS]
        return ids, list(range(1, len(ids)))
    ids, spans = list(enc["input_ids"])[:MAX_TOKENS], list(enc["offset_mapping"])[:MAX_TOKENS]
    slots, covered = [], 0  # covered: end of the last real token's span
    for i, (start, end) in enumerate(spans):
        if end <= start:
            continue  # special tokens (BOS) have no span
        if text[start].isspace():
            slots.append(i)  # " word" or a lone " " (byte-level BPE)
        elif start > 0 and text[start - 1].isspace() and covered < start:
            slots.append(i)  # offsets trimmed of the space
        covered = end
    return ids, slots


def _slot(seed: int, sentence: int, ids: tuple[int, ...], n_slots: int) -> int:
    # Seeded by (seed, sentence, token) alone: a feature's result does not depend on which
    # other features were asked for.
    return int(np.random.default_rng([seed, sentence, *ids]).integers(n_slots))


def _batches(lm, seqs: list[list[int]], batch_size: int):
    """(rows, ids [B, S], mask [B, S]) right-padded, shortest first so padding stays small."""
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        width = max(len(seqs[r]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, : len(seqs[r])] = torch.tensor(seqs[r])
            mask[b, : len(seqs[r])] = 1
        yield rows, ids.to(lm.device), mask.to(lm.device)


def _features_at(
    lm, sae, layer: int, seqs, at: list[int], feats: list[int], batch_size: int
) -> torch.Tensor:
    """[len(seqs), len(feats)]: the features at position at[i] of sequence i."""
    out = torch.zeros(len(seqs), len(feats))
    cols = torch.as_tensor(feats, dtype=torch.long, device=sae.W_dec.device)
    for rows, ids, mask in _batches(lm, seqs, batch_size):
        resid = capture_residuals(lm.model, ids, mask, [layer])[layer]
        pos = torch.as_tensor([at[r] for r in rows], device=resid.device)
        x = resid[torch.arange(len(rows), device=resid.device), pos].to(sae.W_dec)
        out[rows] = sae.encode(x)[:, cols].float().cpu()
    return out


def _mean_features(lm, sae, layer: int, seqs, feats: list[int], batch_size: int) -> torch.Tensor:
    """[len(feats)]: mean activation over every position but the first of the sequences."""
    total, count = torch.zeros(len(feats), dtype=torch.float64), 0
    cols = torch.as_tensor(feats, dtype=torch.long, device=sae.W_dec.device)
    for _, ids, mask in _batches(lm, seqs, batch_size):
        resid = capture_residuals(lm.model, ids, mask, [layer])[layer]
        keep = mask.bool()
        keep[:, 0] = False
        x = resid[keep]
        for s in range(0, len(x), ENCODE_ROWS):
            total += sae.encode(x[s : s + ENCODE_ROWS].to(sae.W_dec))[:, cols].double().sum(0).cpu()
        count += len(x)
    return total / max(count, 1)
