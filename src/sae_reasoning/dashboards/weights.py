"""What a feature's decoder direction does, from weights alone: direct logit effect and neighbours.

Direct logit effect (SAE-Vis's logit tables, which use W_dec[i] @ W_U with the final norm's
weights folded into W_U): W_dec[i] through the model's final norm, the norm's own output at
zero subtracted (LayerNorm's bias), then through the unembedding, its bias subtracted. The
norm divides by the direction's own RMS/std, so values rank tokens within a feature; the
division by the real residual's size at run time is not included. Blocks after the SAE's
layer are skipped (it is the direct path only).
"""

from __future__ import annotations

import torch

# Where Hugging Face causal LMs keep the final norm, on their base model (model.base_model).
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    base = getattr(model, "base_model", model)
    for name in FINAL_NORM_NAMES:
        mod = getattr(base, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    raise ValueError(
        f"{type(model).__name__}: no final norm found on its base model "
        f"(looked for {', '.join(FINAL_NORM_NAMES)}); the dashboards' logit tables need one"
    )


@torch.no_grad()
def direct_logit_effect(model: torch.nn.Module, directions: torch.Tensor) -> torch.Tensor:
    """[n, vocab] logit change along each direction [n, d_model] (see the module docstring)."""
    norm, unembed = final_norm(model), model.get_output_embeddings()
    w = unembed.weight
    d = directions.to(w.device, w.dtype)
    through = norm(d[:, None, :])[:, 0] - norm(torch.zeros_like(d[:1, None, :]))[:, 0]
    return (through @ w.T).float().cpu()


def logit_tables(effect: torch.Tensor, decode, n: int) -> list[dict]:
    """Per row of effect [features, vocab]: the n most promoted and n most suppressed tokens."""
    out = []
    for row in effect:
        top, bottom = row.topk(n), (-row).topk(n)
        out.append(
            {
                "promoted": [
                    {"token": decode([int(i)]), "token_id": int(i), "logit": float(v)}
                    for v, i in zip(top.values, top.indices)
                ],
                "suppressed": [
                    {"token": decode([int(i)]), "token_id": int(i), "logit": float(-v)}
                    for v, i in zip(bottom.values, bottom.indices)
                ],
            }
        )
    return out


@torch.no_grad()
def decoder_neighbours(W_dec: torch.Tensor, features: list[int], n: int) -> list[list[dict]]:
    """Per feature: the n other features whose decoder rows have the highest cosine with its own."""
    w = W_dec.detach().float()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = w[features] @ w.T  # [features, d_sae]
    cos[torch.arange(len(features)), torch.as_tensor(features)] = float("-inf")
    top = cos.topk(min(n, w.shape[0] - 1), dim=1)
    return [
        [{"feature": int(i), "cosine": float(v)} for v, i in zip(vals, idx)]
        for vals, idx in zip(top.values.cpu(), top.indices.cpu())
    ]
