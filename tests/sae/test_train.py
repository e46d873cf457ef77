import math

import pytest
import torch

from sae_reasoning.activations.store import ActivationSet
from sae_reasoning.sae import (
    TrainingConfig,
    TrainingDivergedError,
    evaluate_sae,
    train_sae,
)
from sae_reasoning.sae.checkpoints import latest_checkpoint, load_checkpoint
from sae_reasoning.sae.train_setup import geometric_median, lr_factor
from sae_reasoning.sae.training_data import count_tokens
from tests.sae.conftest import HOOK, planted_data, write_store

TINY = dict(
    expansion_factor=4,
    batch_size=128,
    lr=3e-3,
    l1_coefficient=1.0,
    progress=False,
    init_sample_tokens=512,
    checkpoint_every=5,
    min_steps=1,
)


def test_recovers_a_planted_sparse_dictionary(tmp_path):
    """d_in 32, 128 unit directions, ~3 active per token, noise 0.01."""
    x, D = planted_data(20_000)
    write_store(tmp_path, x, shard_tokens=5_000)
    acts = ActivationSet.open(tmp_path)
    cfg = TrainingConfig(
        expansion_factor=8,
        batch_size=256,
        lr=1e-3,
        l1_coefficient=1.0,
        epochs=4,
        exclude_first_position=False,
        max_norm_ratio=None,
        init_sample_tokens=4096,
        dead_window_tokens=5_000,
        progress=False,
    )
    result = train_sae(acts, HOOK, cfg)
    W = result.sae.W_dec / result.sae.W_dec.norm(dim=1, keepdim=True)
    best_cos = (D @ W.T).max(dim=1).values
    # measured: 100% of the planted directions at cos >= 0.95 (mean best cos ~0.98)
    assert (best_cos >= 0.9).float().mean() >= 0.9
    log = result.history
    assert log["mse"][-1] < 0.5 * log["mse"][0]  # (loss starts low: the L1 term warms up)
    heldout = x[(torch.arange(len(x)) // 10) % 10 == 0]
    m = evaluate_sae(result.sae, [heldout])  # raw units: normalisation was folded in
    assert m["explained_variance"] > 0.8
    assert result.summary["finished"] and result.summary["tokens_seen"] == 4 * (18_000 // 256) * 256


def test_resume_gives_identical_weights(tmp_path, toy_set):
    cfg = TrainingConfig(**TINY, training_tokens=10 * 128)
    straight = train_sae(toy_set, HOOK, cfg)
    ckpts = tmp_path / "ckpt"
    first = train_sae(toy_set, HOOK, cfg, checkpoint_dir=ckpts, stop_at_step=5)
    assert not first.finished and latest_checkpoint(ckpts).name == "step_000000005.pt"
    resumed = train_sae(toy_set, HOOK, cfg, checkpoint_dir=ckpts)
    assert resumed.finished and resumed.summary["steps"] == 10
    for k, v in straight.sae.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[k], v), k
    assert resumed.history == straight.history
    assert latest_checkpoint(ckpts).name == "step_000000010.pt"  # older checkpoints pruned


def test_checkpoint_of_another_config_is_not_resumed(tmp_path, toy_set):
    ckpts = tmp_path / "ckpt"
    train_sae(toy_set, HOOK, TrainingConfig(**TINY, training_tokens=5 * 128), checkpoint_dir=ckpts)
    other = TrainingConfig(**{**TINY, "l1_coefficient": 2.0}, training_tokens=5 * 128)
    result = train_sae(toy_set, HOOK, other, checkpoint_dir=ckpts)
    assert result.history["l1_coefficient"][-1] == 2.0 and len(result.history["step"]) == 5


class NaNAt(ActivationSet):
    """Injects NaN into the training batch of a given step (1-based)."""

    def __init__(self, base: ActivationSet, step: int):
        super().__init__(base.root, base.stores)
        self.step, self.seen = step, 0

    def iter_batches(self, hook_point, batch_size, **kw):
        for batch in super().iter_batches(hook_point, batch_size, **kw):
            if batch_size == TINY["batch_size"]:
                self.seen += 1
                if self.seen == self.step:
                    batch = batch.clone()
                    batch[3, 2] = float("nan")
            yield batch


def test_nan_in_activations_names_the_step_and_keeps_the_checkpoint(tmp_path, toy_set):
    ckpts = tmp_path / "ckpt"
    cfg = TrainingConfig(**TINY, training_tokens=12 * 128)
    with pytest.raises(TrainingDivergedError, match=r"step 7 .*step_000000005\.pt"):
        train_sae(NaNAt(toy_set, step=7), HOOK, cfg, checkpoint_dir=ckpts)
    path = latest_checkpoint(ckpts)
    assert path.name == "step_000000005.pt"
    state = load_checkpoint(path)
    assert state["step"] == 5 and all(torch.isfinite(v).all() for v in state["sae"].values())
    # the run resumes from it once the data is clean, and ends where a clean run ends
    resumed = train_sae(toy_set, HOOK, cfg, checkpoint_dir=ckpts)
    clean = train_sae(toy_set, HOOK, cfg)
    assert torch.equal(resumed.sae.W_dec, clean.sae.W_dec)


def test_nan_loss_is_reported_with_its_step(toy_set):
    cfg = TrainingConfig(**{**TINY, "lr": 1e30}, training_tokens=6 * 128)
    with pytest.raises(TrainingDivergedError, match=r"non-finite (loss|activations).* step \d"):
        train_sae(toy_set, HOOK, cfg)


def test_d_model_mismatch_is_a_clear_error(toy_set):
    with pytest.raises(ValueError, match=r"d_in=32 .*d_model=16 at blocks\.3\.hook_resid_post"):
        train_sae(toy_set, HOOK, TrainingConfig(**TINY, d_in=32))


def test_heldout_examples_never_reach_training(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 8, generator=g)
    heldout = (torch.arange(2000) // 10) % 10 == 0
    x[heldout] = float("nan")  # training would fail on any held-out row
    write_store(tmp_path, x)
    acts = ActivationSet.open(tmp_path)
    cfg = TrainingConfig(**TINY, epochs=2, exclude_first_position=False, max_norm_ratio=None)
    result = train_sae(acts, HOOK, cfg)
    assert result.summary["n_train_tokens"] == 1800
    assert count_tokens(acts, HOOK, None, cfg.split.heldout) == 200


def test_token_budget_and_default_filter(toy_set):
    # 2,000 tokens, position 0 excluded -> 1,800; held-out examples (every 10th) -> 1,620
    default = TrainingConfig()
    assert count_tokens(toy_set, HOOK, default.exclude, default.split.train) == 1620
    result = train_sae(toy_set, HOOK, TrainingConfig(**TINY, epochs=1.5))
    assert result.summary["steps"] == math.floor(1.5 * (1620 // 128))
    # small captures get at least min_steps steps (more passes)
    result = train_sae(toy_set, HOOK, TrainingConfig(**{**TINY, "min_steps": 30}, epochs=1.5))
    assert result.summary["steps"] == 30 and result.summary["epochs_seen"] > 2


def test_schedules():
    total, warm, decay = 100, 10, 20
    f = [lr_factor(s, total, warm, decay) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[50] == 1.0
    assert f[80] == 1.0 and f[99] == pytest.approx(1 / 20)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))


def test_geometric_median_ignores_outliers():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])
    gm = geometric_median(pts)
    assert gm.norm() < 1.5 and pts.mean(0).norm() > 20


def test_config_from_params_validates_keys():
    cfg = TrainingConfig.from_params(
        {
            "l1_coefficient": "2e-4",
            "massive_activations": {"exclude_first_position": False, "max_norm_ratio": None},
        }
    )
    assert cfg.l1_coefficient == 2e-4 and cfg.exclude.max_norm_ratio is None
    with pytest.raises(ValueError, match="unknown sae_training parameters.*l1_coeff"):
        TrainingConfig.from_params({"l1_coeff": 1.0})


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "matryoshka_batchtopk"])
def test_resume_is_exact_for_every_architecture(tmp_path, toy_set, arch):
    # 256 latents, k=2, 128-token batches: many stay silent for the 1-batch dead window,
    # so AuxK runs (TopK family)
    cfg = TrainingConfig(
        **TINY,
        architecture=arch,
        k=2,
        d_sae=256,
        training_tokens=8 * 128,
        dead_window_tokens=128,
        matryoshka_widths=[16, 64],
    )
    straight = train_sae(toy_set, HOOK, cfg)
    ckpts = tmp_path / "ckpt"
    train_sae(toy_set, HOOK, cfg, checkpoint_dir=ckpts, stop_at_step=5)
    resumed = train_sae(toy_set, HOOK, cfg, checkpoint_dir=ckpts)
    for k, v in straight.sae.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[k], v), k
    assert resumed.history == straight.history
    if arch != "jumprelu":
        assert max(straight.history["aux_loss"]) > 0  # AuxK (or matryoshka prefixes) ran
    assert straight.summary["architecture"] == arch


def test_fingerprint_ignores_other_architectures_fields():
    relu = TrainingConfig()
    assert relu.semantic_dict() == TrainingConfig(k=64, l0_coefficient=3.0).semantic_dict()
    assert "l1_coefficient" in relu.semantic_dict() and "k" not in relu.semantic_dict()
    topk = TrainingConfig(architecture="topk")
    assert topk.semantic_dict() != TrainingConfig(architecture="topk", k=64).semantic_dict()
    assert "l1_coefficient" not in topk.semantic_dict()
