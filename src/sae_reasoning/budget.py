"""The planned budget of a study, from configuration and model shapes alone (no weights).

Per model namespace: tokens (corpus + benchmarks captured, SAE training), disk for the
activation shards and SAEs, device-hours per stage, and the runner's memory estimate.
Usable from a notebook::

    from sae_reasoning import budget
    config = budget.config_from_shapes({"model_type": "gpt2", "n_embd": 1024, ...})
    shape = budget.shape_from_config(config)
    budget.capture_flops(shape, tokens=10**8, context=1024, last_layer=12)

FLOPs (Kaplan et al. 2020, forward = 2 x non-embedding parameters per token, plus
attention over the context: 2 x n_layer x n_ctx x d_model):
  capture       a forward through the blocks up to the deepest hook point (capture stops there)
  baseline      full forwards (with the unembedding) over the benchmark prompts, plus the
                generated answer tokens
  sae_training  per hook point and token: encoder and decoder matmuls (2 x 2 x d_in x d_sae),
                x3 for forward + backward = 12 x d_in x d_sae
  causal        per hook point: every scored condition (and the numerical floor's rescoring)
                reruns the blocks above the SAE's layer over the held-out examples' answer
                rows; attribution is one forward + backward (x3) over the select examples;
                the circuit search one condition per size it checks, on its examples
Device-hours = FLOPs / (peak_tflops x 1e12 x mfu) / 3600: an estimate to plan with, not a
measurement (the resource ledger of a run records what it really took).
The totals and the printed table are in budget_table.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GiB = 2**30
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
ROW_METADATA_BYTES = (
    3 * 4 + 4
)  # example_index, position, token_id (int32) and norm (float32) per row
CAUSAL_FIXED_CONDITIONS = (
    13  # clean, splice identity, all-features, error term, top-K set, circuits, the floor's rows
)


class BudgetError(ValueError):
    """The budget cannot be computed; the message names the model and the missing piece."""


@dataclass(frozen=True)
class Device:
    name: str
    peak_tflops: float  # dense peak in the dtype the model runs in
    mfu: float  # fraction of the peak the work reaches

    @classmethod
    def from_params(cls, params: dict) -> Device:
        missing = [k for k in ("name", "peak_tflops", "mfu") if k not in (params or {})]
        if missing:
            raise BudgetError(
                f"params:budget.device needs {missing} (e.g. name: H100-80GB, "
                "peak_tflops: 989, mfu: 0.35)"
            )
        return cls(str(params["name"]), float(params["peak_tflops"]), float(params["mfu"]))

    def hours(self, flops: float) -> float:
        return flops / (self.peak_tflops * 1e12 * self.mfu) / 3600


@dataclass(frozen=True)
class ModelShape:
    """What the budget needs of a model: widths and parameter counts, per block."""

    d_model: int
    n_layers: int
    vocab_size: int
    n_params: int
    block_params: tuple[int, ...]

    def blocks_params(self, first: int = 0, last: int | None = None) -> int:
        """Parameters of blocks first..last (inclusive)."""
        last = self.n_layers - 1 if last is None else last
        return sum(self.block_params[first : last + 1])


# ------------------------------------------------------------------------ shapes


def config_from_shapes(shapes: dict):
    """A transformers config from declared published-config values (`model_type` + fields)."""
    from transformers import AutoConfig

    fields = dict(shapes)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise BudgetError(
            f"shapes {sorted(shapes)}: `model_type` is required (gpt2, gpt_neox, "
            "gemma, phi, llama, ...)"
        )
    return AutoConfig.for_model(model_type, **fields)


def shape_from_config(config) -> ModelShape:
    """Parameter counts from the model built on the meta device (no memory, no weights)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from sae_reasoning.models.hooks import transformer_blocks

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # on the meta device from_config leaves tied embeddings untied
    blocks = transformer_blocks(model)
    return ModelShape(
        d_model=int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0)),
        n_layers=len(blocks),
        vocab_size=int(config.vocab_size),
        n_params=sum(p.numel() for p in model.parameters()),
        block_params=tuple(sum(p.numel() for p in b.parameters()) for b in blocks),
    )


def model_config(handle, namespace: str, declared: dict | None):
    """(config, where it came from): the model's own config.json (local folder or HF cache),
    else the shapes declared in params:models.<namespace>.shapes."""
    from sae_reasoning.models.loading import ModelLoadError

    try:
        return handle.config(), "config"
    except ModelLoadError as exc:
        if not declared:
            raise BudgetError(
                f"model {namespace!r}: no config ({str(exc).splitlines()[0]}) and no "
                f"`shapes` in params:models.{namespace}"
            ) from exc
        return config_from_shapes(declared), f"params:models.{namespace}.shapes"


# ------------------------------------------------------------------------ FLOPs


def forward_flops(
    shape: ModelShape,
    tokens: float,
    context: float,
    first: int = 0,
    last: int | None = None,
    unembed: bool = False,
) -> float:
    """Forward FLOPs of `tokens` tokens through blocks first..last (+ the unembedding)."""
    last = shape.n_layers - 1 if last is None else last
    n_blocks = last - first + 1
    per_token = 2 * shape.blocks_params(first, last) + 2 * n_blocks * context * shape.d_model
    if unembed:
        per_token += 2 * shape.d_model * shape.vocab_size
    return per_token * tokens


def capture_flops(shape: ModelShape, tokens: float, context: float, last_layer: int) -> float:
    return forward_flops(shape, tokens, context, last=last_layer)


def sae_training_flops(d_in: int, d_sae: int, tokens: float) -> float:
    return 12.0 * d_in * d_sae * tokens


# ------------------------------------------------------------------------ the plan


def _layer(key: int | str) -> int:
    """A layer from a `layers` entry or an `sae_source` key (layer or hook name; resid_pre L is
    the output of block L-1, as models.hooks names it)."""
    from sae_reasoning.models.hooks import HookPointError, parse_hook_point

    if isinstance(key, int) or str(key).isdigit():
        return int(key)
    try:
        return parse_hook_point(str(key))
    except HookPointError as exc:
        raise BudgetError(str(exc)) from None


def benchmark_counts(data_loading: dict, tokens_per_example: dict) -> dict[str, tuple[int, int]]:
    """benchmark -> (examples, tokens per example) for every benchmark with examples."""
    out = {}
    for name, cfg in ((data_loading or {}).get("benchmarks") or {}).items():
        n = cfg.get("n_examples")
        if n == 0:
            continue
        if n is None:
            raise BudgetError(
                f"data_loading.benchmarks.{name}.n_examples is null (every row): the "
                "budget needs a number; set it (or 0 to leave the benchmark out)"
            )
        if name not in tokens_per_example:
            raise BudgetError(
                f"params:budget.tokens_per_example has no entry for benchmark {name!r}"
            )
        out[name] = (int(n), int(tokens_per_example[name]))
    return out


def _corpus(capture: dict) -> tuple[int, int]:
    """(tokens, context) of the corpus capture (0 tokens without capture.corpus)."""
    corpus = capture.get("corpus") or {}
    if corpus and corpus.get("max_tokens") is None:
        raise BudgetError(
            "capture.corpus.max_tokens is null (the whole corpus): the budget needs a number"
        )
    return int(corpus.get("max_tokens") or 0), int(corpus.get("context_tokens") or 1024)


def _training_tokens(sae_training: dict, corpus_tokens: int, bench_tokens: int) -> int:
    """Tokens one SAE trains on: sae_training.training_tokens, or its epochs over the pool."""
    # The corpus is captured whenever capture.corpus is configured; `sources` says what trains.
    sources = list(sae_training.get("sources") or ["benchmarks"])
    train_pool = (corpus_tokens if "corpus" in sources else 0) + (
        bench_tokens * (1 - 1 / int(sae_training.get("eval_every") or 10**9))
        if "benchmarks" in sources
        else 0
    )
    training_tokens = sae_training.get("training_tokens")
    if training_tokens is None:
        batch = int(sae_training.get("batch_size", 4096))
        steps = max(
            math.ceil(float(sae_training.get("epochs", 1)) * train_pool / batch),
            int(sae_training.get("min_steps") or 0),
        )
        training_tokens = steps * batch
    return int(training_tokens)


def plan_model(
    namespace: str,
    shape: ModelShape,
    model_params: dict,
    *,
    capture: dict,
    sae_training: dict,
    causal: dict,
    data_loading: dict,
    budget: dict,
    memory: dict | None = None,
) -> dict:
    """The budget of one model namespace (a JSON-able dict)."""
    device = Device.from_params(budget.get("device"))
    layers = sorted({_layer(x) for x in model_params.get("layers", [])})
    if not layers or layers[-1] >= shape.n_layers:
        raise BudgetError(
            f"model {namespace!r}: layers {layers} for a model of {shape.n_layers} blocks"
        )
    pretrained = {_layer(k) for k in (model_params.get("sae_source") or {})}
    trained = [x for x in layers if x not in pretrained]
    storage = str(capture.get("dtype", "float32"))
    row_bytes = shape.d_model * BYTES[storage] + ROW_METADATA_BYTES

    benches = benchmark_counts(data_loading, budget.get("tokens_per_example") or {})
    few_shot = int(budget.get("few_shot_tokens", 0))
    bench_tokens = sum(n * t for n, t in benches.values())
    bench_context = few_shot + max((t for _, t in benches.values()), default=0)
    corpus_tokens, corpus_context = _corpus(capture)
    d_sae = int(sae_training.get("expansion_factor", 8)) * shape.d_model
    training_tokens = _training_tokens(sae_training, corpus_tokens, bench_tokens)

    hours = {
        "capture": device.hours(
            capture_flops(shape, corpus_tokens, corpus_context, layers[-1])
            + capture_flops(shape, bench_tokens, bench_context, layers[-1])
        ),
        "baseline": device.hours(_baseline_flops(shape, benches, bench_context, capture)),
        "sae_training": device.hours(
            len(trained) * sae_training_flops(shape.d_model, d_sae, training_tokens)
        ),
        "causal": device.hours(
            sum(
                _causal_flops(
                    shape,
                    x,
                    benches,
                    bench_context,
                    causal,
                    int(budget.get("answer_tokens", 3)),
                    circuit_checks(d_sae, int(causal.get("circuit_refine", 4))),
                )
                for x in layers
            )
        ),
    }
    hours["total"] = sum(hours.values())
    disk = {
        "corpus_activations": corpus_tokens * row_bytes * len(layers),
        "benchmark_activations": bench_tokens * row_bytes * len(layers),
        # weights, plus a checkpoint with Adam's two moments: ~4 copies of W_enc and W_dec (float32)
        "saes": len(trained) * 4 * 2 * shape.d_model * d_sae * 4,
    }
    disk["total"] = sum(disk.values())
    return {
        "model": namespace,
        "n_params": shape.n_params,
        "d_model": shape.d_model,
        "n_layers": shape.n_layers,
        "hook_points": [f"blocks.{x}.hook_resid_post" for x in layers],
        "d_sae": d_sae,
        "pretrained_sae_layers": sorted(pretrained & set(layers)),
        "tokens": {
            "corpus": corpus_tokens,
            "benchmarks": bench_tokens,
            "captured": corpus_tokens + bench_tokens,
            "sae_training_per_hook_point": training_tokens,
        },
        "storage_dtype": storage,
        "disk_bytes": disk,
        "disk_gib": {k: round(v / GiB, 2) for k, v in disk.items()},
        "device_hours": {k: float(f"{v:.3g}") for k, v in hours.items()},
        "device": {"name": device.name, "peak_tflops": device.peak_tflops, "mfu": device.mfu},
        **({"memory": memory} if memory else {}),
    }


def _baseline_flops(shape: ModelShape, benches: dict, context: int, capture: dict) -> float:
    n_examples = sum(n for n, _ in benches.values())
    tokens = sum(n * t for n, t in benches.values())
    if capture.get("generate", False):
        tokens += n_examples * int(capture.get("max_new_tokens", 0))
    return forward_flops(shape, tokens, context, unembed=True)


def circuit_checks(d_sae: int, refine: int) -> int:
    """Sizes the circuit search (causal/circuits.py) checks at most: doubling up to the live
    features (at most d_sae), then rounds of `refine` + 1 sizes, each cutting the gap between
    the last failing and the first passing size `refine` + 1 ways."""
    doubling = math.ceil(math.log2(max(d_sae, 2))) + 1
    rounds = math.ceil(math.log(max(d_sae / 2, 2)) / math.log(max(refine, 1) + 1))
    return doubling + rounds * (refine + 1)


def _causal_flops(
    shape: ModelShape,
    layer: int,
    benches: dict,
    context: int,
    causal: dict,
    answer_positions: float,
    circuit_checks: int,
) -> float:
    """Attribution (forward + backward over the select examples), then every condition (the
    numerical floor's rescoring of the clean rows among them) and each circuit size checked
    rerun the blocks above `layer`: at the answer positions only (positions: answer; the
    last prompt token and the answer's tokens, `answer_positions` per example; earlier
    positions come from the clean pass) or at every position."""
    per_split = {
        b: (min(n // 2, int(causal.get("max_examples_per_benchmark", n))), t)
        for b, (n, t) in benches.items()
    }
    full = sum(n * t for n, t in per_split.values())
    at = (
        full
        if causal.get("positions", "answer") == "all"
        else sum(n for n, _ in per_split.values()) * answer_positions
    )
    modes = len(causal.get("modes") or ["zero"])
    singles = (
        int(causal.get("top_k", 0))
        + int(causal.get("n_random_controls", 0))
        + int(causal.get("n_null_features", 0))
    )
    conditions = (
        modes * singles
        + int(causal.get("n_random_sets", 0))
        + int(causal.get("n_random_directions", 0))
        + CAUSAL_FIXED_CONDITIONS
    )
    circuit_share = sum(
        min(n, int(causal.get("circuit_examples_per_benchmark", n))) for n, _ in per_split.values()
    ) / max(sum(n for n, _ in per_split.values()), 1)
    above = forward_flops(shape, at, context, first=layer + 1, unembed=True)
    return (
        3 * forward_flops(shape, full, context, unembed=True)
        + (conditions + circuit_checks * circuit_share) * above
    )


def runner_memory(
    config,
    dtype: str,
    namespace: str,
    model_params: dict,
    *,
    capture: dict,
    causal: dict,
    sae_training: dict,
) -> dict:
    """The memory need the device runner places the namespace with: its own rule for
    `memory_gb` in the model's block, else `preflight.estimate_memory` on the config (what
    runner_config.py's estimator computes from the catalog)."""
    from kedro_device_runner.memory import declared_need
    from sae_reasoning.preflight import estimate_memory

    declared = declared_need(namespace, model_params)
    if declared is not None:
        return {"need_gb": round(declared.gb, 1), "how": declared.how}
    est = estimate_memory(config, dtype, capture, causal, sae_training)
    return {
        "need_gb": round(est["total_bytes"] / GiB, 1),
        "how": est["breakdown"],
        "model_dtype": dtype,
    }


def plan(
    handle,
    namespace: str,
    model_params: dict,
    *,
    capture: dict,
    sae_training: dict,
    causal: dict,
    data_loading: dict,
    budget: dict,
) -> dict:
    """One namespace's budget from its lazy model handle (config only); a model whose shapes
    cannot be had gets {"model", "error"} instead, so the other models are still planned."""
    try:
        config, source = model_config(handle, namespace, model_params.get("shapes"))
        shape = shape_from_config(config)
        memory = runner_memory(
            config,
            handle.spec.dtype,
            namespace,
            model_params,
            capture=capture,
            causal=causal,
            sae_training=sae_training,
        )
        out = plan_model(
            namespace,
            shape,
            model_params,
            capture=capture,
            sae_training=sae_training,
            causal=causal,
            data_loading=data_loading,
            budget=budget,
            memory=memory,
        )
    except BudgetError as exc:
        return {"model": namespace, "error": str(exc)}
    except (
        KeyError,
        TypeError,
        ValueError,
    ) as exc:  # a malformed value: named, never blocking validate
        return {"model": namespace, "error": f"{type(exc).__name__}: {exc}"}
    return {**out, "shapes_from": source}
