"""BatchTopK-family inference threshold (issue 12, point 10): a bias-corrected EMA while
training, then calibrated on training tokens so that inference L0 = k."""

import pytest
import torch

from sae_reasoning.activations.store import ActivationSet
from sae_reasoning.sae import (
    SAEConfig,
    SAETrainingJob,
    TrainHParams,
    TrainingConfig,
    build_sae,
    evaluate_sae,
    train_sae,
)
from sae_reasoning.sae.calibration import TopValues, calibrate_topk_threshold, shared_threshold
from sae_reasoning.sae.checkpoints import latest_checkpoint, load_checkpoint
from sae_reasoning.sae.fingerprint import TRAINER_VERSION
from sae_reasoning.sae.saelens_format import load_sae, save_sae
from sae_reasoning.sae.training_job import write_sae_folder
from tests.sae.conftest import HOOK, planted_data, write_store

# 40 steps of 256 tokens: the regime where the plain EMA (rate 0.01, from 0) had only
# reached 1 - 0.99^40 = 33% of its value
SHORT = dict(
    k=4,
    expansion_factor=4,
    batch_size=256,
    training_tokens=40 * 256,
    min_steps=1,
    init_sample_tokens=2048,
    calibration_tokens=4096,
    dead_window_tokens=2048,
    exclude_first_position=False,
    max_norm_ratio=None,
    progress=False,
)


def test_shared_threshold_by_hand():
    top = torch.tensor([5.0, 3.0, 4.0])  # the 3 largest of some pre-activations
    assert shared_threshold(top, 2) == 3.5  # exactly 5 and 4 exceed it
    assert shared_threshold(torch.tensor([2.0, -1.0, -3.0]), 2) == 0.0  # f > 0 needs pre > 0
    assert shared_threshold(torch.tensor([2.0, 1.0]), 2) == 0.0  # fewer entries than kN


def test_top_values_stream_equals_a_full_sort():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(50, 30, generator=g) for _ in range(7)]
    top = TopValues(333)
    for b in batches:
        top.update(b)
    full = torch.cat(batches).reshape(-1).sort(descending=True).values[:333]
    assert torch.equal(top.values.sort(descending=True).values, full)


def test_calibrated_sae_has_inference_l0_k_on_the_calibration_tokens():
    sae = build_sae(SAEConfig(d_in=16, d_sae=64, architecture="batchtopk", k=5))
    sae.initialize_weights(torch.Generator().manual_seed(0), encoder_scale=1.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 16, generator=g)
    info = calibrate_topk_threshold(sae, iter(x.split(300)), max_tokens=900)  # 300, 300, 300
    assert info["calibration_tokens"] == 900 and info["inference_l0_train"] == 5.0
    assert evaluate_sae(sae, [x[:900]])["l0"] == 5.0  # the encode path
    assert float(sae.topk_threshold) == info["topk_threshold"] > 0


def test_bias_corrected_ema_and_its_counter_survive_a_state_dict_round_trip():
    cfg = SAEConfig(d_in=4, d_sae=8, architecture="batchtopk", k=1)
    hp = TrainHParams(topk_threshold_lr=0.01)
    mins = torch.linspace(1.0, 2.0, 10, dtype=torch.float64)
    straight = build_sae(cfg)
    straight.after_step(torch.tensor([3.0, 1.5]), hp)
    assert float(straight.topk_threshold) == pytest.approx(1.5)  # the min itself, not 0.01 * it
    straight = build_sae(cfg)
    for m in mins:
        straight.after_step(torch.stack([m, m + 1]), hp)
    first = build_sae(cfg)
    for m in mins[:5]:
        first.after_step(torch.stack([m, m + 1]), hp)
    resumed = build_sae(cfg)
    resumed.load_state_dict(first.state_dict())
    for m in mins[5:]:
        resumed.after_step(torch.stack([m, m + 1]), hp)
    assert int(resumed.topk_threshold_steps) == 10
    assert float(resumed.topk_threshold) == pytest.approx(float(straight.topk_threshold), rel=1e-12)
    # what the bias correction divides out: 1 - 0.99^t of the plain EMA's weight
    w = 0.01 * 0.99 ** torch.arange(9, -1, -1, dtype=torch.float64)
    assert float(straight.topk_threshold) == pytest.approx(float((w * mins).sum() / w.sum()))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """12,000 tokens (1,200 examples of 10), d_in 32, 128 planted directions, ~3 per token."""
    root = tmp_path_factory.mktemp("planted")
    x, _ = planted_data(12_000)
    write_store(root, x, shard_tokens=4000)
    return ActivationSet.open(root), x


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
def test_short_run_saves_an_sae_with_inference_l0_k(tmp_path, planted, arch):
    acts, x = planted
    cfg = TrainingConfig(architecture=arch, **SHORT)
    result = train_sae(acts, HOOK, cfg)
    s, sae = result.summary, result.sae
    assert s["k"] == 4 and s["calibration_tokens"] == 4096 and s["steps"] == 40
    assert s["inference_l0_train"] == pytest.approx(4, rel=0.01)
    example = torch.arange(len(x)) // 10
    train, heldout = x[example % 10 != 0], x[example % 10 == 0]
    folder = tmp_path / "sae"
    save_sae(sae, folder)  # as SAELens saves BatchTopK: jumprelu
    saved = load_sae(folder)
    assert saved.cfg.architecture == "jumprelu"
    assert saved.cfg.metadata["inference_l0_train"] == s["inference_l0_train"]
    m_train, m_heldout = evaluate_sae(saved, [train]), evaluate_sae(saved, [heldout])
    # measured (batchtopk / matryoshka): train 4.04 / 4.05, held-out 4.05 / 4.09; the
    # bias-corrected EMA alone gives ~8 here (it lags the growing encoder): hence calibration
    assert m_train["l0"] == pytest.approx(4, rel=0.03)
    assert m_heldout["l0"] == pytest.approx(4, rel=0.05)
    assert list(m_heldout)[list(m_heldout).index("l0") + 1] == "k" and m_heldout["k"] == 4
    # Sensitivity: the threshold the old code saved (a plain EMA from 0) is the corrected
    # EMA times 1 - 0.99^t (training never reads it, so the run is otherwise the same).
    steps = int(sae.topk_threshold_steps)
    plain = s["topk_threshold_ema"] * (1 - (1 - cfg.topk_threshold_lr) ** steps)
    saved.threshold.data.fill_(plain)
    assert evaluate_sae(saved, [train])["l0"] > 4 * 4  # measured: 39 / 38, not 4


def test_resume_keeps_the_bias_correction_counter(tmp_path, planted):
    acts, _ = planted
    cfg = TrainingConfig(
        architecture="batchtopk", **{**SHORT, "training_tokens": 8 * 256}, checkpoint_every=100
    )
    straight = train_sae(acts, HOOK, cfg)
    ckpts = tmp_path / "ckpt"
    train_sae(acts, HOOK, cfg, checkpoint_dir=ckpts, stop_at_step=5)
    assert int(load_checkpoint(latest_checkpoint(ckpts))["sae"]["topk_threshold_steps"]) == 5
    resumed = train_sae(acts, HOOK, cfg, checkpoint_dir=ckpts)
    assert int(resumed.sae.topk_threshold_steps) == int(straight.sae.topk_threshold_steps) == 8
    for key in ("topk_threshold_ema", "topk_threshold", "inference_l0_train"):
        assert resumed.summary[key] == straight.summary[key], key


def test_saes_with_uncalibrated_thresholds_are_retrained(tmp_path, planted):
    acts, _ = planted
    cfg = TrainingConfig(architecture="batchtopk", **SHORT)
    job = SAETrainingJob(acts, HOOK, cfg)
    assert TRAINER_VERSION >= 3 and job.inputs["trainer_version"] == TRAINER_VERSION
    assert "calibration_tokens" in cfg.semantic_dict()
    assert "calibration_tokens" not in TrainingConfig().semantic_dict()  # relu: no threshold
    old_inputs = {**job.inputs, "trainer_version": 2}
    sae = build_sae(SAEConfig(d_in=32, d_sae=128, architecture="batchtopk", k=4))
    write_sae_folder(
        tmp_path / "s",
        sae,
        {"fingerprint": "from-trainer-2", "finished": True, "fingerprint_inputs": old_inputs},
    )
    assert job.reuse_reason(tmp_path / "s") == f"trainer version 2 -> {TRAINER_VERSION}"
