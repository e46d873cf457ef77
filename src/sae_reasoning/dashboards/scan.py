"""What the captured tokens say about a few features: histogram, top contexts, quantile samples.

One pass over a hook point's activation stores encodes every scanned token for the chosen
features only ([tokens, features] floats: 46k tokens x 40 features is 7 MB); contexts are
rebuilt from the per-token metadata (example, position, token id), as causal/contexts.py does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sae_reasoning.activations.store import ActivationSet, MassiveActivationFilter
from sae_reasoning.sae.architectures import build_sae

# Architectures where a latent depends on its own encoder column (and threshold) only, so
# encoding just the chosen features gives their exact activations at a fraction of the cost.
# TopK-style SAEs pick among all latents: every latent is encoded there.
FEATURE_LOCAL = ("standard", "jumprelu")


@dataclass
class Scanned:
    """One store's scanned rows: activations of the chosen features, keep mask, metadata."""

    benchmark: str
    acts: np.ndarray  # [rows, features] float32
    keep: np.ndarray  # [rows] bool: rows the SAE was trained/evaluated on (massive-activation rule)
    example: np.ndarray  # [rows] example index
    position: np.ndarray  # [rows]
    token_id: np.ndarray  # [rows]

    def example_rows(self) -> dict[int, np.ndarray]:
        """example -> its row indices sorted by position."""
        order = np.lexsort((self.position, self.example))
        ex = self.example[order]
        cuts = np.flatnonzero(np.diff(ex)) + 1
        return {
            int(part[0]): rows
            for part, rows in zip(np.split(ex, cuts), np.split(order, cuts))
            if len(part)
        }


@torch.no_grad()
def feature_encoder(sae, features: list[int]):
    """x [n, d_in] -> the chosen features' activations [n, len(features)]."""
    idx = torch.as_tensor(features, dtype=torch.long, device=sae.W_dec.device)
    if sae.cfg.architecture not in FEATURE_LOCAL:
        return lambda x: sae.encode(x)[:, idx]
    small = build_sae(sae.cfg.replace(d_sae=len(features))).to(sae.W_dec)
    state = {
        k: (
            v[:, idx]
            if k == "W_enc"
            else v[idx]
            if v.shape[:1] == (sae.d_sae,) and k != "b_dec"
            else v
        )
        for k, v in sae.state_dict().items()
    }
    small.load_state_dict(state)
    return small.encode


@torch.no_grad()
def scan(
    sae,
    activations: ActivationSet,
    hook: str,
    features: list[int],
    *,
    max_tokens: int,
    exclude: MassiveActivationFilter | None,
    chunk: int = 4096,
) -> list[Scanned]:
    """Encode up to `max_tokens` captured tokens (split evenly over the benchmarks, whole shards
    in order) and keep the chosen features' activations."""
    stores = activations.for_hook(hook)
    per_store = -(-max_tokens // len(stores))
    encode = feature_encoder(sae, features)
    out = []
    for store in stores:
        parts, n = [], 0
        for i in range(len(store.manifest["shards"])):
            if n >= per_store:
                break
            s = {k: v[: per_store - n] for k, v in store.shard(i).items()}
            keep = (
                exclude.keep_mask(s["position"], s["norm"], store.median_norm)
                if exclude
                else torch.ones(len(s["norm"]), dtype=torch.bool)
            )
            f = (
                torch.cat(
                    [
                        encode(s["activations"][a : a + chunk].to(sae.W_dec)).float().cpu()
                        for a in range(0, len(keep), chunk)
                    ]
                )
                if len(keep)
                else torch.empty(0, len(features))
            )
            parts.append((f, keep, s["example_index"], s["position"], s["token_id"]))
            n += len(keep)
        cols = [
            torch.cat([p[j] for p in parts]).numpy() if parts else np.empty(0) for j in range(5)
        ]
        out.append(
            Scanned(
                store.manifest.get("benchmark") or store.folder.parent.name,
                cols[0].reshape(-1, len(features)),
                cols[1].astype(bool),
                cols[2].astype(np.int64),
                cols[3].astype(np.int64),
                cols[4].astype(np.int64),
            )
        )
    return out


def histogram(values: np.ndarray, bins: int) -> dict:
    """Histogram of the nonzero activations (as SAE-Vis: the zeros would swamp it)."""
    nz = values[values > 0]
    if not len(nz):
        return {"counts": [], "edges": [], "n_nonzero": 0}
    counts, edges = np.histogram(nz, bins=bins)
    return {"counts": counts.tolist(), "edges": edges.tolist(), "n_nonzero": len(nz)}


class ContextBuilder:
    """Token contexts around chosen rows, every token with the feature's activation."""

    def __init__(self, scanned: list[Scanned], decode, *, before: int, after: int):
        self.scanned, self.decode, self.before, self.after = scanned, decode, before, after
        self._rows = [s.example_rows() for s in scanned]
        self._tokens: dict[int, str] = {}

    def token(self, tid: int) -> str:
        if tid not in self._tokens:
            self._tokens[tid] = self.decode([tid])
        return self._tokens[tid]

    def context(self, si: int, row: int, j: int) -> dict:
        """Tokens from `before` before row to `after` after it in the same example; rows the
        massive-activation rule leaves out carry activation None (the SAE is off-distribution)."""
        s = self.scanned[si]
        rows = self._rows[si][int(s.example[row])]
        pos = s.position[row]
        near = rows[
            (s.position[rows] >= pos - self.before) & (s.position[rows] <= pos + self.after)
        ]
        toks = [
            {
                "text": self.token(int(s.token_id[r])),
                "act": float(s.acts[r, j]) if s.keep[r] else None,
                "here": bool(r == row),
            }
            for r in near
        ]
        return {
            "benchmark": s.benchmark,
            "example_index": int(s.example[row]),
            "position": int(pos),
            "activation": float(s.acts[row, j]),
            "token": self.token(int(s.token_id[row])),
            "tokens": toks,
        }


def feature_values(scanned: list[Scanned], j: int) -> tuple[np.ndarray, np.ndarray]:
    """(values over kept rows, their (store, row) references) for feature column j."""
    vals, refs = [], []
    for si, s in enumerate(scanned):
        rows = np.flatnonzero(s.keep)
        vals.append(s.acts[rows, j])
        refs.append(np.stack([np.full(len(rows), si), rows], 1))
    return (
        np.concatenate(vals) if vals else np.empty(0, np.float32),
        np.concatenate(refs) if refs else np.empty((0, 2), np.int64),
    )


def top_rows(values: np.ndarray, refs: np.ndarray, n: int) -> list[tuple[int, int]]:
    """The n strongest firing rows (fewer when the feature fires on fewer tokens)."""
    order = np.argsort(-values, kind="stable")[:n]
    return [tuple(int(x) for x in refs[i]) for i in order if values[i] > 0]


def quantile_rows(
    values: np.ndarray, refs: np.ndarray, n_groups: int, per_group: int, rng: np.random.Generator
) -> list[dict]:
    """Nonzero activations cut into n_groups equal-count groups (highest first), per_group
    rows drawn at random from each: what the feature does below its top examples."""
    nz = np.flatnonzero(values > 0)
    if not len(nz):
        return []
    ranked = nz[np.argsort(values[nz], kind="stable")]
    out = []
    for g, part in reversed(list(enumerate(np.array_split(ranked, n_groups)))):
        if not len(part):
            continue
        pick = rng.choice(part, size=min(per_group, len(part)), replace=False)
        pick = pick[np.argsort(-values[pick], kind="stable")]
        out.append(
            {
                "quantile": [g / n_groups, (g + 1) / n_groups],
                "activation_range": [float(values[part].min()), float(values[part].max())],
                "n": len(part),
                "rows": [tuple(int(x) for x in refs[i]) for i in pick],
            }
        )
    return out
