"""Capture: run a model over the prompts and stream residual activations into shard folders.

The capture node runs a `CaptureJob` into the folder its activation-store handle gives it
(activations stream to disk as the model runs; nothing large is held in memory or passed
through the catalog) and hands the completed manifests to the activation dataset.

- One forward per batch serves every requested hook point and stops right after the
  deepest one (models/hooks.py `recording`): no later block and no unembedding runs.
- Batches are length-sorted under a token budget (batching.py), so padding is small;
  padding rows never reach the files.
- Shards are written on a background thread (background.py) with a bounded queue; on
  Ctrl-C the batches already queued are still written, so every shard they complete is
  kept for the resume.
- Each benchmark is written into `.<benchmark>.tmp/` and swapped in when complete
  (publish.LocalSwap), so a failed run never damages an earlier complete capture; a
  folder whose fingerprint matches the job is reused. An interrupted benchmark resumes
  after its last complete shard and ends with the same files as an uninterrupted run (the
  batch plan is deterministic, so the rows after the cut are recomputed exactly).

Captured tokens: each example's own tokens (question and gold answer, teacher-forced),
not the few-shot block every prompt of a benchmark shares (identical rows would flood SAE
training). That block runs once per benchmark and is cached (models/cached_forward.py).
"""

from __future__ import annotations

import errno
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

from sae_reasoning.activations.background import BackgroundWriter
from sae_reasoning.activations.batching import plan_batches
from sae_reasoning.activations.digests import shard_mismatch
from sae_reasoning.activations.store import (
    DTYPES,
    MANIFEST,
    ShardWriter,
    release_free_memory,
    storage_rows,
    write_json_atomic,
)
from sae_reasoning.activations.tokens import PackedBenchmark, check_context, pack_prompts
from sae_reasoning.models.cached_forward import forward
from sae_reasoning.models.hooks import check_layers, hook_point, recording
from sae_reasoning.models.loading import LanguageModel, ModelHandle
from sae_reasoning.publish import LocalSwap

log = logging.getLogger(__name__)
CAPTURE_VERSION = 1
INLINE_PREFIX = 16  # shared blocks up to this many tokens run inline instead of cached
META_BYTES = 16  # example_index, position, token_id (int32) and norm (float32) per row


def frame_digest(df: pd.DataFrame) -> str:
    return hashlib.sha256(
        pd.util.hash_pandas_object(df.astype(str), index=True).values.tobytes()
    ).hexdigest()


@dataclass
class CaptureJob:
    model: ModelHandle
    prompts: pd.DataFrame
    layers: list[int]
    dtype: str = "float32"
    batch_tokens: int = 4096  # tokens per forward pass: rows x (shared block + width)
    shard_tokens: int = 16384  # rows per safetensors shard
    max_pending_batches: int = 2  # batches queued for the writer thread (bounds memory)
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

    # What each folder's rows are (the manifest's "tokens"), and the progress bar's label.
    TOKENS = "each example's question and gold answer; the shared few-shot block excluded"
    LABEL = "capture"

    def names(self) -> list[str]:
        """The folders this job writes under its root, one per benchmark."""
        return list(dict.fromkeys(self.prompts["benchmark"]))

    def _validate(self) -> None:
        if len(self.prompts) == 0:
            raise ValueError(
                f"capture {self.model.name}: the prompts table is empty; nothing to capture"
            )

    def _pack(self, lm: LanguageModel, todo: list[str]) -> list[PackedBenchmark]:
        """The token sequences of the folders in `todo`, checked against the context window."""
        encoded = pack_prompts(lm.tokenizer, self.prompts, todo)
        check_context(self.model.name, lm.model.config, encoded, self.prompts)
        return encoded

    def run(self, root: str | Path) -> dict:
        """Write every benchmark's shard folders under root; returns a summary."""
        root = Path(root)
        self._validate()
        if self.dtype not in DTYPES:
            raise ValueError(
                f"capture {self.model.name}: storage dtype {self.dtype!r}; "
                f"expected one of {sorted(DTYPES)}"
            )
        _check_writable(root)
        fingerprint = self.fingerprint()
        benchmarks = self.names()
        for b in benchmarks:  # a swap an interruption cut short
            self.swap(root).recover(b)
        todo = [b for b in benchmarks if not self._reusable(root / b, fingerprint)]
        for b in set(benchmarks) - set(todo):
            log.info(
                "capture %s/%s: reusing activations (fingerprint %s matches)",
                self.model.name,
                b,
                fingerprint,
            )
        summary = {
            "fingerprint": fingerprint,
            "reused": sorted(set(benchmarks) - set(todo)),
            "captured": {},
        }
        if not todo:
            return summary
        lm = self.model.load()
        layers = check_layers(lm.model, self.layers, self.model.name)
        encoded = self._pack(lm, todo)
        n_tokens = sum(len(b.ids) for b in encoded)
        release_free_memory()  # tokenising left freed holes in the heap: give them back
        row_bytes = lm.d_model * DTYPES[self.dtype].itemsize + META_BYTES
        _check_free_space(root, n_tokens * len(layers) * row_bytes, self.model.name)
        bar = tqdm(
            total=n_tokens, desc=f"{self.LABEL} {self.model.name}", unit="tok", unit_scale=True
        )
        t0 = time.time()
        for bench in encoded:
            summary["captured"][bench.name] = self._capture_benchmark(
                lm, layers, bench, root, fingerprint, bar
            )
        bar.close()
        summary["seconds"] = time.time() - t0
        summary["tokens_per_second"] = (bar.n - bar.initial) / max(summary["seconds"], 1e-9)
        log.info(
            "capture %s: %d tokens in %.1f s (%.0f tokens/s)",
            self.model.name,
            n_tokens,
            summary["seconds"],
            summary["tokens_per_second"],
        )
        return summary

    def _capture_benchmark(
        self,
        lm: LanguageModel,
        layers: list[int],
        bench: PackedBenchmark,
        root: Path,
        fingerprint: str,
        bar: tqdm,
    ) -> int:
        swap = self.swap(root)
        n_done, resumed = self._resume_point(
            swap.staging(bench.name), layers, fingerprint, bench.name
        )
        writers = self._writers(swap.staging(bench.name), lm, layers, bench, fingerprint, resumed)
        bar.update(n_done)
        sink = BackgroundWriter(writers, self.max_pending_batches)
        try:
            with torch.no_grad():
                prefix_norms = self._stream(lm, layers, bench, n_done, sink, bar)
            manifests = sink.close()
        except BaseException:
            sink.abort()
            raise
        for layer, w in writers.items():
            w.manifest["shared_block"] = _shared_block_stats(
                prefix_norms.get(layer), manifests[layer]
            )
            write_json_atomic(w.folder / MANIFEST, w.manifest)
        swap.finish(bench.name)
        return manifests[layers[0]]["n_tokens"]

    def swap(self, root: Path) -> LocalSwap:
        """Each benchmark is captured in `.<benchmark>.tmp` (kept after an interruption: the
        capture resumes there) and swapped in when every hook point's manifest is complete."""
        return LocalSwap(root, "tmp", complete=self._complete)

    def _complete(self, folder: Path) -> bool:
        paths = [folder / hook_point(layer) / MANIFEST for layer in self.layers]
        return all(p.is_file() and json.loads(p.read_text()).get("complete") for p in paths)

    def _writers(
        self,
        tmp: Path,
        lm: LanguageModel,
        layers: list[int],
        bench: PackedBenchmark,
        fingerprint: str,
        resumed: dict,
    ) -> dict[int, ShardWriter]:
        header = {
            "model": self.model.name,
            "benchmark": bench.name,
            "fingerprint": fingerprint,
            "tokens": self.TOKENS,
            "batch_tokens": self.batch_tokens,
            **self.extra,
        }
        return {
            layer: ShardWriter(
                tmp / hook_point(layer),
                header={**header, "hook_point": hook_point(layer), "layer": layer},
                d_model=lm.d_model,
                dtype=self.dtype,
                shard_tokens=self.shard_tokens,
                resume=resumed.get(layer),
            )
            for layer in layers
        }

    def _stream(
        self,
        lm: LanguageModel,
        layers: list[int],
        bench: PackedBenchmark,
        n_done: int,
        sink: BackgroundWriter,
        bar: tqdm,
    ) -> dict:
        """Run every batch after the first `n_done` tokens (a resume) and queue its rows for
        the writers; returns the shared block's norms per layer."""
        offset = len(bench.prefix)
        prefix_ctx, prefix_norms = None, {}
        # A short shared block (a zero-shot prompt's BOS) is cheaper run inline with
        # every row than through a KV cache; a few-shot block is cached.
        inline = 0 < offset <= INLINE_PREFIX
        if bench.prefix and not inline:
            ids = torch.tensor([bench.prefix], device=lm.device)
            with recording(lm.model, layers, stop=False) as acts:
                _, prefix_ctx = forward(
                    lm.model, ids, torch.ones_like(ids), keep=True, logits=False
                )
            prefix_norms = {layer: acts[layer][0].norm(dim=-1).float().cpu() for layer in layers}
        done = 0  # tokens in the batches before this one
        for batch in plan_batches(bench.lengths.tolist(), self.batch_tokens, context=offset):
            skip = n_done - done  # rows already in complete shards (resume)
            done += batch.tokens
            if skip >= batch.tokens:
                continue
            ids, mask = bench.batch(batch.items, lm.tokenizer.pad_token_id, lm.device)
            if inline:
                block = torch.tensor([bench.prefix], device=lm.device).expand(len(batch.items), -1)
                with recording(lm.model, layers) as acts:
                    forward(
                        lm.model,
                        torch.cat([block, ids], 1),
                        torch.cat([torch.ones_like(block), mask], 1),
                    )
                prefix_norms = prefix_norms or {
                    layer: acts[layer][0, :offset].norm(dim=-1).float().cpu() for layer in layers
                }
                acts = {layer: a[:, offset:] for layer, a in acts.items()}
            else:
                ctx = prefix_ctx.expand(len(batch.items)) if prefix_ctx is not None else None
                with recording(lm.model, layers) as acts:
                    forward(lm.model, ids, mask, ctx)
            sink.put(
                _rows(
                    acts,
                    layers,
                    ids,
                    mask,
                    bench.rows[list(batch.items)],
                    offset,
                    max(skip, 0),
                    self.dtype,
                )
            )
            bar.update(batch.tokens - max(skip, 0))
        return prefix_norms

    def manifests(self, root: str | Path) -> dict[str, dict[str, dict]]:
        """{benchmark: {hook point: manifest}} of this job's folders under root."""
        root = Path(root)
        return {
            b: {
                hook_point(layer): json.loads((root / b / hook_point(layer) / MANIFEST).read_text())
                for layer in self.layers
            }
            for b in self.names()
        }

    def _resume_point(
        self, tmp: Path, layers: list[int], fingerprint: str, name: str
    ) -> tuple[int, dict]:
        """Tokens already in complete shards of an interrupted run of this same job, and
        its manifests cut to those shards; (0, {}) and a clean folder otherwise."""
        manifests, complete = {}, []
        for layer in layers:
            folder = tmp / hook_point(layer)
            path = folder / MANIFEST
            m = json.loads(path.read_text()) if path.exists() else {}
            same = (
                m.get("fingerprint") == fingerprint
                and not m.get("complete")
                and m.get("batch_tokens") == self.batch_tokens
                and m.get("shard_tokens") == self.shard_tokens
            )
            if not same:
                complete = [0]
                break
            good = 0
            for entry in m["shards"]:
                f = folder / entry["file"]
                if (
                    not f.exists()
                    or entry["n_tokens"] != self.shard_tokens
                    or shard_mismatch(f, entry)
                ):
                    break
                good += 1
            manifests[layer] = m
            complete.append(good)
        n = min(complete) if complete else 0
        if n == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            return 0, {}
        for layer, m in manifests.items():
            folder = tmp / hook_point(layer)
            kept = {e["file"] for e in m["shards"][:n]}
            for f in folder.iterdir():
                if f.name != MANIFEST and f.name not in kept:
                    f.unlink()
            m["shards"] = m["shards"][:n]
            m["n_tokens"] = n * self.shard_tokens
        log.info(
            "capture %s/%s: resuming after %d complete shard(s) (%d tokens) of an interrupted run",
            self.model.name,
            name,
            n,
            n * self.shard_tokens,
        )
        return n * self.shard_tokens, manifests


def capture_into(job: CaptureJob, store) -> dict[str, dict[str, dict]]:
    """Run `job` in the folder an activation-store handle prepares for it (for a URL: its
    staging folder, holding the manifests the URL has, so finished folders are reused);
    returns the completed manifests, which the activation dataset saves (publishes)."""
    root = store.prepare(job)
    job.run(root)
    return job.manifests(root)


def _rows(
    acts: dict,
    layers: list[int],
    ids: torch.Tensor,
    mask: torch.Tensor,
    rows,
    offset: int,
    skip: int,
    dtype: str,
) -> dict:
    """One batch's stored rows per layer (padding dropped, the first `skip` rows too):
    activations (in the storage dtype, with their norms) with example index, position and
    token id. Computed here, on the forward's thread: the writer thread only copies."""
    real = mask.bool()
    keep = slice(skip, None)
    pos = (offset + torch.arange(ids.shape[1], device=ids.device))[None].expand_as(ids)
    ex = torch.from_numpy(rows).to(ids.device)[:, None].expand_as(ids)
    meta = dict(example_index=ex[real][keep], position=pos[real][keep], token_id=ids[real][keep])
    out = {}
    for layer in layers:
        rows, norm = storage_rows(acts[layer][real][keep], dtype)
        out[layer] = dict(activations=rows, norm=norm, **meta)
    return out


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


def _check_free_space(root: Path, need: int, model: str) -> None:
    """Fail before the first batch if the disk cannot hold the capture."""
    free = shutil.disk_usage(root).free
    if need * 1.02 + (16 << 20) > free:
        raise OSError(
            errno.ENOSPC,
            f"capture {model}: the activations need about {need / 2**30:.2f} GiB in "
            f"{root} but only {free / 2**30:.2f} GiB are free; free space, store "
            "float16/bfloat16 (capture.dtype), or capture fewer layers/prompts",
        )
