"""Attribution patching over every SAE feature (Marks et al. 2024; Syed et al. 2023).

One forward and backward per batch gives, for every feature, the estimated change of the
gold answer's log-probability if the feature were replaced at the positions the
ablations act at: gradient x (replacement - activation), summed over them. Exact
ablation (conditions.py) then checks the top of this order.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

from sae_reasoning.causal.splice import AttributionProbe
from sae_reasoning.scoring import (
    POSITIONS,
    AnswerBatch,
    EncodedBenchmark,
    LanguageModel,
    answer_logprobs,
    cut_above,
    iter_answer_batches,
    patch_residual,
    rerun_segment,
)


def attribution(
    lm: LanguageModel,
    sae,
    layer: int,
    benchmarks: list[EncodedBenchmark],
    batch_size: int,
    **scoring,
) -> torch.Tensor:
    """Estimated mean change in gold log-prob per example when each feature is zero-ablated."""
    grad_sum, grad_f_sum = attribution_terms(lm, sae, layer, benchmarks, batch_size, **scoring)
    return -grad_f_sum


def attribution_terms(
    lm: LanguageModel,
    sae,
    layer: int,
    benchmarks: list[EncodedBenchmark],
    batch_size: int,
    *,
    positions: str = "answer",
    exclude_first: bool = True,
    observe: Callable[[AnswerBatch, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per feature, mean over examples of sum_tokens grad and sum_tokens grad * f.

    The estimate for replacing f by a constant c is c * first - second: zero ablation
    -second, mean ablation mean * first - second (one backward pass serves both). The sums
    run over the positions the ablation acts at (`positions`, `exclude_first`: as in
    score_conditions), so the estimate is of the same quantity the exact ablation measures.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions {positions!r}: expected one of {POSITIONS}")
    d_sae = sae.W_dec.shape[0]
    sums = [torch.zeros(d_sae, dtype=torch.float64), torch.zeros(d_sae, dtype=torch.float64)]
    n = 0
    probe = AttributionProbe(sae)
    with frozen(lm.model), frozen(sae):
        if positions == "all":
            n = _attribute_all_positions(
                lm, sae, layer, benchmarks, batch_size, exclude_first, sums, observe
            )
        else:
            for batch in iter_answer_batches(lm, benchmarks, batch_size, progress="attribution"):
                _attribute_batch(lm, layer, probe, batch, sums)
                if observe is not None:
                    observe(batch, probe.resid)
                n += len(batch.examples)
    return (sums[0] / max(n, 1)).float(), (sums[1] / max(n, 1)).float()


def estimate(terms: tuple[torch.Tensor, torch.Tensor], mode: str, stats: dict) -> torch.Tensor:
    """Attribution estimate of each feature's single ablation in `mode` (zero or mean)."""
    grad_sum, grad_f_sum = terms
    if mode == "zero":
        return -grad_f_sum
    if mode == "mean":
        return stats["mean"].to(grad_sum) * grad_sum - grad_f_sum
    raise ValueError(f"no attribution estimate for ablation mode {mode!r} (zero or mean)")


@contextmanager
def frozen(module: torch.nn.Module):
    """No parameter gradients: backward then only runs from the metric down to the probe's
    leaf (the blocks above the SAE), never computing weight gradients or the blocks below."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _add_terms(sums: list[torch.Tensor], probe: AttributionProbe, acted: torch.Tensor) -> None:
    """Add sum grad and sum grad * f over the positions `acted` ([B, S] bool) of the probe's
    leaf."""
    f = probe.features
    if f is None or f.grad is None:
        return
    grad = f.grad * acted[..., None].to(f.grad)
    sums[0] += grad.sum((0, 1)).double().cpu()
    sums[1] += (grad * f.detach()).sum((0, 1)).double().cpu()


def _attribute_all_positions(
    lm, sae, layer, benchmarks, batch_size, exclude_first, sums, observe=None
) -> int:
    """Attribution summed over every position an ablation with positions='all' acts at.

    The probe goes in wherever the ablation would: the few-shot block's and the questions'
    contexts are rebuilt with it above the layer, with grad (scoring.rerun_segment, from the
    clean residual recorded while the clean contexts were built), and the answer pass runs
    on them, so the gradient reaches every position. The few-shot block is the same for
    all of a benchmark's examples: it runs once per benchmark, its keys/values above the
    layer are cut into leaves that sum the gradients of every batch, and one backward at
    the benchmark's end carries that sum through the block (cached_forward.cut_above).
    Running each example uncached instead would run and backpropagate the block once per
    example; rebuilding it per batch, once per batch. Returns the number of examples.
    """
    model = lm.model
    n = 0
    block = None  # the benchmark's few-shot block under the probe, while its batches run
    for batch in iter_answer_batches(
        lm, benchmarks, batch_size, progress="attribution", record_layer=layer
    ):
        with torch.enable_grad():
            ctx = None
            if batch.prefix is not None:
                if block is None:
                    block = _probed_block(model, sae, layer, batch.prefix, exclude_first)
                ctx = block["context"].expand(len(batch.examples))
            q_probe = AttributionProbe(sae)
            if batch.question is not None:
                ctx = rerun_segment(
                    model,
                    layer,
                    batch.question,
                    ctx,
                    _probed(model, layer, q_probe),
                    exclude_first=False,
                )
            a_probe = AttributionProbe(sae)
            with patch_residual(model, layer, a_probe):
                logits = batch.run(model, grad=True, context=ctx)
            _, summed, _ = answer_logprobs(batch, logits)
            summed[batch.gold_rows()].sum().backward()
        if batch.question is not None:
            _add_terms(
                sums, q_probe, _acted(batch.question.positions, batch.question.mask, exclude_first)
            )
        _add_terms(sums, a_probe, _acted(batch.answer_positions(), batch.mask, exclude_first))
        if observe is not None:
            observe(batch, a_probe.resid)
        n += len(batch.examples)
        if block is not None and batch.last_of_benchmark:
            _finish_block(sums, block)
            block = None
    return n


def _probed(model, layer, probe):
    return lambda: patch_residual(model, layer, probe)


def _acted(seg_positions, mask, exclude_first):
    keep = mask.bool()
    return keep & (seg_positions != 0) if exclude_first else keep


def _probed_block(model, sae, layer, prefix, exclude_first) -> dict:
    """The few-shot block rebuilt under a probe, its keys/values above `layer` cut into leaves."""
    probe = AttributionProbe(sae)
    built = rerun_segment(
        model, layer, prefix, None, _probed(model, layer, probe), exclude_first=False
    )
    context, originals, leaves = cut_above(built, layer)
    return {
        "probe": probe,
        "acted": _acted(prefix.positions, prefix.mask, exclude_first),
        "context": context,
        "originals": originals,
        "leaves": leaves,
    }


def _finish_block(sums, block) -> None:
    """The block's gradient, summed over the benchmark's batches, back through it once."""
    pairs = [
        (o, leaf.grad)
        for o, leaf in zip(block["originals"], block["leaves"])
        if leaf.grad is not None
    ]
    if pairs:
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    _add_terms(sums, block["probe"], block["acted"])


def _attribute_batch(lm, layer, probe, batch, sums: list[torch.Tensor]) -> None:
    """Add the batch's sums over its answer positions of gradient and gradient x activation."""
    with patch_residual(lm.model, layer, probe):
        logits = batch.run(lm.model, grad=True)
    _, summed, _ = answer_logprobs(batch, logits)
    summed[batch.gold_rows()].sum().backward()
    _add_terms(sums, probe, batch.mask.bool())
