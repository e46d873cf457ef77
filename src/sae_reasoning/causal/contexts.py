"""What a feature is: the benchmark tokens where it fires most, each in its context.

Read from the captured activations (question and answer tokens of every example), whose
per-token metadata (example, position, token id) is enough to rebuild each context.
"""

from __future__ import annotations

import torch

from sae_reasoning.activations.store import ActivationSet, MassiveActivationFilter

OPEN, CLOSE = "⟦", "⟧"


@torch.no_grad()
def top_activating_contexts(
    sae,
    activations: ActivationSet,
    hook: str,
    features: list[int],
    tokenizer,
    *,
    n: int = 5,
    window: int = 12,
    after: int = 3,
    chunk: int = 4096,
    exclude: MassiveActivationFilter | None = None,
) -> dict[int, list[dict]]:
    """feature -> its `n` strongest tokens: activation, benchmark, example, position, text.

    The text shows up to `window` tokens before the token, the token in ⟦ ⟧, `after` after.
    """
    if not features:
        return {}
    feats = torch.as_tensor(features, dtype=torch.long)
    best_val = torch.full((len(feats), 0), float("-inf"))
    best_ref = torch.zeros((len(feats), 0, 2), dtype=torch.long)  # (store, row)
    stores = activations.for_hook(hook)
    for si, store in enumerate(stores):
        offset = 0
        for i in range(len(store.manifest["shards"])):
            s = store.shard(i)
            keep = (
                exclude.keep_mask(s["position"], s["norm"], store.median_norm)
                if exclude
                else torch.ones(len(s["norm"]), dtype=torch.bool)
            )
            for start in range(0, len(keep), chunk):
                x = s["activations"][start : start + chunk].to(sae.W_dec)
                f = sae.encode(x)[:, feats.to(x.device)].float().cpu().T  # [F, rows]
                f[:, ~keep[start : start + chunk]] = float("-inf")
                rows = torch.arange(offset + start, offset + start + f.shape[1])
                ref = torch.stack([torch.full_like(rows, si), rows], -1).expand(len(feats), -1, -1)
                vals = torch.cat([best_val, f], 1)
                refs = torch.cat([best_ref, ref], 1)
                top = vals.topk(min(n, vals.shape[1]), dim=1)
                best_val, best_ref = (
                    top.values,
                    torch.gather(refs, 1, top.indices[..., None].expand(-1, -1, 2)),
                )
            offset += len(keep)
    metas = [store.metadata() for store in stores]
    out: dict[int, list[dict]] = {}
    for fi, feat in enumerate(features):
        entries = []
        for val, (si, row) in zip(best_val[fi].tolist(), best_ref[fi].tolist()):
            if val == float("-inf") or val <= 0:
                continue  # a feature that fires on fewer than n tokens lists only those
            meta = metas[si]
            ex, pos = int(meta.example_index.iat[row]), int(meta.position.iat[row])
            same = meta[meta.example_index == ex].sort_values("position")
            before = same[(same.position < pos) & (same.position >= pos - window)].token_id.tolist()
            nxt = same[(same.position > pos) & (same.position <= pos + after)].token_id.tolist()
            tok = int(meta.token_id.iat[row])
            text = (
                tokenizer.decode(before)
                + OPEN
                + tokenizer.decode([tok])
                + CLOSE
                + tokenizer.decode(nxt)
            )
            entries.append(
                {
                    "activation": float(val),
                    "benchmark": stores[si].manifest.get("benchmark"),
                    "example_index": ex,
                    "position": pos,
                    "token": tokenizer.decode([tok]),
                    "token_id": tok,
                    "text": text,
                }
            )
        out[int(feat)] = entries
    return out
