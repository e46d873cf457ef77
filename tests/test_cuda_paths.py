"""The GPU recipe's code paths that run on CPU too: device resolution, bf16 models, bf16
activation storage, SAE training on bf16 activations, memory figures without CUDA.

GPU-only (no CPU equivalent; `benchmarks/gpu_smoke.py` runs them on every visible GPU):
torch.cuda.mem_get_info in the runner's child probe (kedro_device_runner/memory.py), the fused
CUDA Adam kernel, one CUDA_VISIBLE_DEVICES per slot with spawned workers (kedro_device_runner/
slots.py, device_slot.py), and CUDA max_memory_allocated as a node's peak (node_metrics.py).
"""

from __future__ import annotations

import psutil
import pytest
import torch
from safetensors import safe_open

from kedro_device_runner import memory
from sae_reasoning import preflight
from sae_reasoning.activations import ActivationSet
from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.models import ModelHandle, ModelSpec, capture_residuals
from sae_reasoning.models.loading import default_device
from sae_reasoning.sae import TrainingConfig, evaluate_sae, train_sae
from sae_reasoning.sae.train import resolve_device
from tests.prompts_fixture import tiny_prompts
from tests.sae.conftest import HOOK, planted_data

CUDA = torch.cuda.is_available()


def test_auto_resolves_to_the_gpu_when_one_is_visible_else_the_cpu():
    expected = torch.device("cuda" if CUDA else "cpu")
    assert resolve_device("auto") == expected == default_device()
    assert resolve_device("cpu") == torch.device("cpu")
    assert preflight.available_memory_bytes()[0] == expected.type


@pytest.mark.skipif(CUDA, reason="the CPU fallbacks of the memory figures")
def test_memory_figures_fall_back_to_host_memory_without_cuda():
    device, free = preflight.available_memory_bytes()
    assert device == "cpu" and 0 < free <= psutil.virtual_memory().total
    assert memory.gpu_free_memory(["0"]) == {}  # the child probe finds no GPU: slots get no limit
    assert 0 < memory.worker_memory(gpu=False) <= psutil.virtual_memory().total


def test_node_peak_memory_is_rss_on_cpu():
    from kedro_device_runner.node_metrics import NodeMeter

    with NodeMeter() as meter:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    figures = meter.figures()
    if not torch.cuda.is_initialized():
        assert figures["device"] == "cpu"
        assert figures["peak_memory_bytes"] == figures["peak_rss_bytes"] >= 64 * 2**20


@pytest.fixture(scope="module")
def handles(tiny_model_dirs):
    return {
        dtype: ModelHandle(
            ModelSpec(
                f"tiny_llama_{dtype}",
                str(tiny_model_dirs["llama"]),
                dtype=dtype,
                converted_cache=None,
            )
        )
        for dtype in ("float32", "bfloat16")
    }


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "gemma", "phi", "llama"])
def test_bf16_model_loads_and_runs_on_cpu_close_to_fp32(tiny_model_dirs, family):
    lms = {
        dt: ModelHandle(
            ModelSpec(family, str(tiny_model_dirs[family]), dtype=dt, converted_cache=None)
        ).load("cpu")
        for dt in ("float32", "bfloat16")
    }
    assert {p.dtype for p in lms["bfloat16"].model.parameters()} == {torch.bfloat16}
    ids = (
        lms["float32"]
        .tokenizer("Question: What is 3 + 4?\nAnswer: 7", return_tensors="pt")
        .input_ids
    )
    with torch.no_grad():
        ref = lms["float32"].model(ids).logits
        out = lms["bfloat16"].model(ids).logits
        resid = capture_residuals(lms["bfloat16"].model, ids, None, [1])[1]
    assert (
        out.dtype == torch.bfloat16 and torch.isfinite(out).all() and resid.dtype == torch.bfloat16
    )
    # bf16 keeps ~3 significant digits: logits agree to a few percent of their spread.
    assert (out.float() - ref).abs().max() < 0.05 * ref.std() + 0.02


def _rows(acts: ActivationSet, bench: str) -> torch.Tensor:
    store = acts.stores[bench][HOOK_1]
    return torch.cat([store.shard(i)["activations"] for i in range(len(store.manifest["shards"]))])


HOOK_1 = "blocks.1.hook_resid_post"


def test_bf16_storage_round_trip_is_the_rounded_fp32_capture(tmp_path, handles):
    prompts = tiny_prompts()
    for dt in ("float32", "bfloat16"):
        CaptureJob(handles["float32"], prompts, layers=[1], dtype=dt, shard_tokens=16).run(
            tmp_path / dt
        )
    fp32, bf16 = ActivationSet.open(tmp_path / "float32"), ActivationSet.open(tmp_path / "bfloat16")
    store = bf16.stores["arith"][HOOK_1]
    assert store.manifest["dtype"] == "bfloat16"
    first = tmp_path / "bfloat16" / "arith" / HOOK_1 / store.manifest["shards"][0]["file"]
    with safe_open(str(first), "pt") as f:
        assert f.get_slice("activations").get_dtype() == "BF16"  # half the bytes on disk
    for bench in ("arith", "logic"):
        torch.testing.assert_close(
            _rows(bf16, bench).float(),
            _rows(fp32, bench).to(torch.bfloat16).float(),
            atol=0,
            rtol=0,
        )
    batch = next(bf16.iter_batches(HOOK_1, 8, shuffle=False, exclude=None))
    assert batch.dtype == torch.float32  # read back as float32 for training


def test_bf16_model_capture_matches_fp32_within_bf16_precision(tmp_path, handles):
    prompts = tiny_prompts()
    for dt in ("float32", "bfloat16"):
        CaptureJob(handles[dt], prompts, layers=[1], dtype="float32").run(tmp_path / dt)
    a, b = (_rows(ActivationSet.open(tmp_path / dt), "arith") for dt in ("float32", "bfloat16"))
    assert a.shape == b.shape
    assert ((a - b).norm(dim=1) / a.norm(dim=1)).max() < 0.05


def test_sae_trains_on_bf16_activations_as_well_as_on_fp32(tmp_path):
    x, _ = planted_data(6000, d_in=32, n_features=128)
    cfg = TrainingConfig(
        architecture="topk",
        k=4,
        expansion_factor=4,
        batch_size=256,
        lr=3e-3,
        epochs=3,
        progress=False,
        init_sample_tokens=1024,
        min_steps=1,
        device="auto",
    )
    results = {}
    for dt in ("float32", "bfloat16"):
        write_store(tmp_path / dt, x, dt)
        acts = ActivationSet.open(tmp_path / dt)
        assert acts.stores["bench"][HOOK].manifest["dtype"] == dt
        result = train_sae(acts, HOOK, cfg)
        assert {p.dtype for p in result.sae.parameters()} == {
            torch.float32
        }  # SAE weights stay fp32
        results[dt] = evaluate_sae(
            result.sae, acts.iter_batches(HOOK, 1024, shuffle=False, exclude=None)
        )
    # 3 epochs of a 4-latent TopK on ~3 planted directions per token reach EV ~0.74 in fp32;
    # bf16 rounding (relative 0.4%) must not change that.
    assert results["bfloat16"]["explained_variance"] > 0.6
    assert (
        abs(results["bfloat16"]["explained_variance"] - results["float32"]["explained_variance"])
        < 0.02
    )


def write_store(root, acts: torch.Tensor, dtype: str) -> None:
    """As tests/sae/conftest.write_store, in a given storage dtype: 10-token examples."""
    from sae_reasoning.activations.store import ShardWriter

    n, d = acts.shape
    w = ShardWriter(
        root / "bench" / HOOK,
        header={"model": "toy", "hook_point": HOOK},
        d_model=d,
        dtype=dtype,
        shard_tokens=1000,
    )
    idx = torch.arange(n)
    w.add(
        acts, example_index=idx // 10, position=idx % 10, token_id=torch.zeros(n, dtype=torch.int32)
    )
    w.close()
