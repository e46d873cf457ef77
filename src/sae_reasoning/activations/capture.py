"""Capture: run a model over the prompts and stream residual activations into shard folders.

A `CaptureJob` is lazy: the capture node returns it and the activation dataset runs it
into its folder (activations stream to disk as the model runs; nothing large is held in
memory or passed through the catalog). Each benchmark is written to a temporary folder
and renamed when complete, so a failed run never damages an earlier complete capture,
and a folder whose fingerprint matches the job is reused instead of recomputed.

Captured tokens: each example's own tokens (question and gold answer, teacher-forced),
not the few-shot block every prompt of a benchmark shares (identical rows would flood SAE
training). That block runs once per benchmark and is cached (models/cached_forward.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from sae_reasoning.activations.store import MANIFEST, ShardWriter, write_json_atomic
from sae_reasoning.models.cached_forward import forward
from sae_reasoning.models.hooks import check_layers, hook_point, recording
from sae_reasoning.models.loading import ModelHandle
from sae_reasoning.scoring import check_lengths, encode_prompts, pad_right

log = logging.getLogger(__name__)
CAPTURE_VERSION = 1


def frame_digest(df: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(df.astype(str), index=True).values.tobytes()).hexdigest()


@dataclass
class CaptureJob:
    model: ModelHandle
    prompts: pd.DataFrame
    layers: list[int]
    dtype: str = "float32"
    batch_size: int = 16
    shard_tokens: int = 65536
    extra: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        key = {
            "version": CAPTURE_VERSION,
            "model": repr(self.model.spec),
            "prompts": frame_digest(self.prompts[["id", "benchmark", "prompt", "target"]]),
            "layers": sorted(self.layers),
            "dtype": self.dtype,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def _reusable(self, folder: Path, fingerprint: str) -> bool:
        for layer in self.layers:
            manifest = folder / hook_point(layer) / MANIFEST
            if not manifest.exists():
                return False
            m = json.loads(manifest.read_text())
            if not m.get("complete") or m.get("fingerprint") != fingerprint:
                return False
        return True

    def run(self, root: str | Path) -> dict:
        """Write every benchmark's shard folders under root; returns a summary."""
        root = Path(root)
        _check_writable(root)
        fingerprint = self.fingerprint()
        benchmarks = list(dict.fromkeys(self.prompts["benchmark"]))
        todo = [b for b in benchmarks if not self._reusable(root / b, fingerprint)]
        for b in set(benchmarks) - set(todo):
            log.info("capture %s/%s: reusing activations (fingerprint %s matches)", self.model.name, b, fingerprint)
        summary = {"fingerprint": fingerprint, "reused": sorted(set(benchmarks) - set(todo)), "captured": {}}
        if not todo:
            return summary
        lm = self.model.load()
        layers = check_layers(lm.model, self.layers, self.model.name)
        encoded = [e for e in encode_prompts(lm.tokenizer, self.prompts) if e.name in todo]
        check_lengths(lm, encoded)
        pad = lm.tokenizer.pad_token_id
        n_tokens = sum(len(x.question) + len(x.answers[x.gold]) for e in encoded for x in e.examples)
        bar = tqdm(total=n_tokens, desc=f"capture {self.model.name}", unit="tok", unit_scale=True)
        t0 = time.time()
        for bench in encoded:
            tmp = root / f".{bench.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            writers = {
                layer: ShardWriter(
                    tmp / hook_point(layer),
                    header={"model": self.model.name, "benchmark": bench.name, "hook_point": hook_point(layer),
                            "layer": layer, "fingerprint": fingerprint,
                            "tokens": "each example's question and gold answer; the shared few-shot block excluded",
                            **self.extra},
                    d_model=lm.d_model, dtype=self.dtype, shard_tokens=self.shard_tokens)
                for layer in layers
            }
            with torch.no_grad():
                prefix_ctx, prefix_norms = None, {}
                if bench.prefix:
                    ids = torch.tensor([bench.prefix], device=lm.device)
                    with recording(lm.model, layers, stop=False) as acts:
                        _, prefix_ctx = forward(lm.model, ids, torch.ones_like(ids), keep=True, logits=False)
                    prefix_norms = {layer: acts[layer][0].norm(dim=-1).float().cpu() for layer in layers}
                order = sorted(bench.examples, key=lambda e: len(e.question) + len(e.answers[e.gold]))
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start:start + self.batch_size]
                    seqs = [e.question + e.answers[e.gold] for e in chunk]
                    ids, mask = pad_right(seqs, pad, lm.device)
                    ctx = prefix_ctx.expand(len(chunk)) if prefix_ctx is not None else None
                    with recording(lm.model, layers) as acts:
                        forward(lm.model, ids, mask, ctx)
                    real = mask.bool()
                    offset = len(bench.prefix)
                    pos = (offset + torch.arange(ids.shape[1], device=ids.device))[None].expand_as(ids)
                    ex = torch.tensor([e.row for e in chunk], device=ids.device)[:, None].expand_as(ids)
                    for layer, w in writers.items():
                        w.add(acts[layer][real], example_index=ex[real], position=pos[real], token_id=ids[real])
                    bar.update(int(real.sum()))
                    bar.set_postfix(tok_s=f"{bar.n / max(time.time() - t0, 1e-9):.0f}")
            for layer, w in writers.items():
                w.close()
                w.manifest["shared_block"] = _shared_block_stats(prefix_norms.get(layer), w.manifest)
                write_json_atomic(w.folder / MANIFEST, w.manifest)
            final = root / bench.name
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            summary["captured"][bench.name] = sum(x.manifest["n_tokens"] for x in list(writers.values())[:1])
        bar.close()
        summary["seconds"] = time.time() - t0
        summary["tokens_per_second"] = n_tokens / max(summary["seconds"], 1e-9)
        log.info("capture %s: %d tokens in %.1f s (%.0f tokens/s)", self.model.name, n_tokens,
                 summary["seconds"], summary["tokens_per_second"])
        return summary


def _shared_block_stats(norms: torch.Tensor | None, manifest: dict) -> dict | None:
    """Norms in the shared few-shot block, which is not stored: records the massive
    activation at the first position (e.g. SmolLM2: ~140x the median) for the report."""
    if norms is None or not len(norms):
        return None
    median = manifest["norm_stats"]["median"] if "norm_stats" in manifest else None
    return {
        "n_tokens": len(norms),
        "first_position_norm": float(norms[0]),
        "median_norm": float(norms.median()),
        "first_position_ratio_to_captured_median": float(norms[0]) / median if median else None,
    }


def _check_writable(root: Path) -> None:
    """Fail before any model work if the folder cannot take shards."""
    probe = root / ".write_probe"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"activation folder {root} is not writable: {exc}") from exc
