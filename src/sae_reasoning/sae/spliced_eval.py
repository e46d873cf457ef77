"""The SAE spliced into the model: CE loss recovered and KL divergence (SAELens's evals).

On held-out prompts (full text: few-shot block, question and gold answer), the residual
stream after block `layer` is replaced by

    clean        nothing (the model as is)
    with SAE     the SAE's reconstruction x_hat (no error term)
    ablation     zeros

and next-token cross-entropy is averaged over every predicted token. As in SAELens
(`get_recons_loss`, names as in its `model_performance_preservation` and
`model_behavior_preservation` metrics):

    ce_loss_score (CE loss recovered) = (CE_ablation - CE_with_SAE) / (CE_ablation - CE_clean)
    kl_div_with_sae       mean_tokens KL(p_clean || p_with_SAE)
    kl_div_with_ablation  mean_tokens KL(p_clean || p_ablation)
    kl_div_score          (kl_div_with_ablation - kl_div_with_sae) / kl_div_with_ablation

Positions the SAE never saw in training are left clean in every condition: the first
position of each sequence and rows whose norm exceeds `max_norm` (the training filter,
activations.store.MassiveActivationFilter; SmolLM2 writes ~140x the median norm at
position 0). Their count is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from sae_reasoning.models.hooks import parse_hook_point, patch_residual, recording
from sae_reasoning.models.partial_forward import start_at


@dataclass
class SplicedEvalConfig:
    n_prompts: int = 32  # held-out prompts evaluated (a few dozen: cheap, ~1% noise)
    max_tokens: int = 256  # per prompt: the last max_tokens tokens of its text
    batch_size: int = 4
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> SplicedEvalConfig:
        return cls(**(params or {}))


def heldout_texts(
    prompts: pd.DataFrame, eval_every: int | None, n: int, seed: int = 0
) -> list[str]:
    """Up to n prompt+target texts of rows the SAE was not trained on (row % eval_every == 0,
    the trainer's held-out split: activations' example_index is the prompts row)."""
    rows = prompts.reset_index(drop=True)
    if eval_every:
        rows = rows[rows.index % int(eval_every) == 0]
    if len(rows) > n:
        rows = rows.sample(n=n, random_state=seed).sort_index()
    return (rows["prompt"] + rows["target"]).tolist()


def _batches(
    tokenizer, texts: list[str], max_tokens: int, batch_size: int, pad_id: int, device
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    ids = [tokenizer(t)["input_ids"][-max_tokens:] for t in texts]
    for s in range(0, len(ids), batch_size):
        chunk = ids[s : s + batch_size]
        width = max(len(x) for x in chunk)
        inp = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, x in enumerate(chunk):
            inp[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        yield inp.to(device), mask.to(device)


@torch.no_grad()
def training_norm_cut(activations, hook_point: str, max_norm_ratio: float | None) -> float | None:
    """SAE training's norm cut (`max_norm_ratio` x a benchmark's median norm) in raw units,
    for held-out texts that mix benchmarks: at the middle benchmark's median norm."""
    if max_norm_ratio is None:
        return None
    medians = sorted(store.median_norm for store in activations.for_hook(hook_point))
    return max_norm_ratio * medians[len(medians) // 2]


class _Splice:
    """The residual replacement of one condition ("sae": x_hat, "ablation": zeros), leaving
    the positions the SAE was not trained on clean (and counting them)."""

    def __init__(self, sae, exclude_first_position: bool, max_norm: float | None):
        self.sae, self.exclude_first_position, self.max_norm = sae, exclude_first_position, max_norm
        self.mode, self.mask, self.passed_through = "sae", None, 0

    def keep_clean(self, resid: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros(resid.shape[:2], dtype=torch.bool, device=resid.device)
        if self.exclude_first_position:
            keep[:, 0] = True
        if self.max_norm is not None:
            keep |= resid.float().norm(dim=-1) > self.max_norm
        return keep

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        keep = self.keep_clean(resid)
        self.passed_through += int((keep & self.mask).sum())
        if self.mode == "sae":
            new = self.sae(resid.to(self.sae.dtype)).to(resid.dtype)
        else:
            new = torch.zeros_like(resid)
        return torch.where(keep[..., None], resid, new)


def _logprobs(model, ids, mask) -> torch.Tensor:
    """Log-probabilities [batch, seq, vocab] under the hooks installed (position t predicts
    token t + 1; the last position predicts past the text)."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    # Written over the logits, which nothing else reads: no second [batch, seq, vocab]
    # tensor (200 MB here, 1 GB for a 256k vocabulary). Same values bit for bit.
    return torch.log_softmax(logits, dim=-1, out=logits)


def _ce_sum(logprobs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> float:
    """Summed next-token cross-entropy over the `valid` predictions."""
    return float(-logprobs[:, :-1].gather(-1, target[..., None])[..., 0][valid].sum())


def _add_batch(sums: dict[str, float], model, layer: int, splice: _Splice, ids, mask) -> int:
    """Add one batch's summed CE (clean, sae, ablation) and KL to `sums`; its predictions."""
    target = ids[:, 1:]
    valid = (mask[:, 1:] * mask[:, :-1]).bool()  # predictions of real next tokens
    with recording(model, [layer], stop=False) as rec:
        clean = _logprobs(model, ids, mask)
    p_clean = clean.exp()
    sums["ce_clean"] += _ce_sum(clean, target, valid)
    for mode in ("sae", "ablation"):
        splice.mode, splice.mask = mode, mask.bool()
        # The splice cannot change blocks 0..layer: start from the clean residual there.
        with start_at(model, layer, rec[layer]), patch_residual(model, layer, splice):
            lp = _logprobs(model, ids, mask)
        sums[f"ce_{mode}"] += _ce_sum(lp, target, valid)
        # KL(p_clean || p) per position, in place over lp (its CE is taken): no temporaries
        kl = torch.sub(clean, lp, out=lp).mul_(p_clean).sum(-1)
        sums[f"kl_{mode}"] += float(kl[:, :-1][valid].sum())
    return int(valid.sum())


@torch.no_grad()  # evaluation: no autograd graph through the model (memory, time)
def spliced_eval(
    lm,
    sae,
    hook_point: str,
    texts: list[str],
    *,
    max_tokens: int = 256,
    batch_size: int = 4,
    exclude_first_position: bool = True,
    max_norm: float | None = None,
) -> dict[str, Any]:
    """CE loss recovered and KL divergence of `sae` spliced in at `hook_point` of `lm`
    (a models.loading.LanguageModel) over `texts`."""
    if not texts:
        raise ValueError(f"spliced eval of {hook_point}: no held-out prompts")
    layer = parse_hook_point(hook_point)
    model, tok = lm.model, lm.tokenizer
    if lm.d_model != sae.d_in:
        raise ValueError(
            f"SAE for {hook_point} has d_in={sae.d_in} but the model "
            f"{lm.name} has d_model={lm.d_model}"
        )
    device = lm.device
    splice = _Splice(sae.to(device), exclude_first_position, max_norm)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    sums = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_ablation": 0.0, "kl_sae": 0.0, "kl_ablation": 0.0}
    n_pred, n_spliced = 0, 0
    for ids, mask in _batches(tok, texts, max_tokens, batch_size, pad, device):
        n_pred += _add_batch(sums, model, layer, splice, ids, mask)
        n_spliced += int(mask.sum())
    passed = splice.passed_through // 2  # counted in both spliced conditions
    return _metrics(sums, hook_point, len(texts), n_pred, n_spliced, passed)


def _metrics(
    sums: dict[str, float],
    hook_point: str,
    n_prompts: int,
    n_pred: int,
    n_spliced: int,
    passed: int,
) -> dict[str, Any]:
    ce = {k: sums[f"ce_{k}"] / n_pred for k in ("clean", "sae", "ablation")}
    kl_sae, kl_abl = sums["kl_sae"] / n_pred, sums["kl_ablation"] / n_pred
    denom = ce["ablation"] - ce["clean"]
    score = (ce["ablation"] - ce["sae"]) / denom if denom != 0 else float("nan")
    return {
        "hook_point": hook_point,
        "n_prompts": n_prompts,
        "n_predicted_tokens": n_pred,
        "ce_loss_without_sae": ce["clean"],
        "ce_loss_with_sae": ce["sae"],
        "ce_loss_with_ablation": ce["ablation"],
        "ce_loss_score": score,
        "ce_loss_recovered": score,
        "kl_div_with_sae": kl_sae,
        "kl_div_with_ablation": kl_abl,
        "kl_div_score": (kl_abl - kl_sae) / kl_abl if kl_abl > 0 else float("nan"),
        "positions_left_clean": passed,
        "positions": n_spliced,
        "splice": "residual after block replaced by the SAE reconstruction (no error term) / "
        "zeros, except positions the SAE was not trained on",
    }
