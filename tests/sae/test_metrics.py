"""Metric regression tests on tensors small enough to check by hand."""

import math

import pytest
import torch

from sae_reasoning.sae import METRIC_NAMES, MetricsAccumulator, SAEConfig, build_sae, evaluate_sae

X = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
X_HAT = torch.tensor([[1.0, 2.0], [3.0, 3.0]])
F = torch.tensor([[1.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 2.0]])


def test_hand_computed_metrics():
    acc = MetricsAccumulator(d_sae=4, dense_threshold=0.6)
    acc.update(X, X_HAT, F)
    m = acc.compute()
    assert set(m) == set(METRIC_NAMES)
    assert m["n_tokens"] == 2
    # squared errors: token 1 -> (2-1)^2 = 1, token 2 -> 0; per token: 1/2
    assert m["mse"] == pytest.approx(0.5)
    # mean(x) = [2, 2]; sum ||x - mean||^2 = 2 + 2 = 4  ->  fvu = 1/4 (about zero it would be 1/20)
    assert m["fvu"] == pytest.approx(0.25)
    assert m["explained_variance"] == pytest.approx(0.75)
    # active latents: token 1 -> {0, 3}, token 2 -> {3}: L0 = 3/2
    assert m["l0"] == pytest.approx(1.5)
    # latents 1 and 2 never fire; only latent 3 fires on > 0.6 * 2 tokens
    assert m["dead_fraction"] == pytest.approx(0.5) and m["n_dead"] == 2
    assert m["dense_fraction"] == pytest.approx(0.25) and m["n_dense"] == 1
    # ||x||: sqrt(2) and 3 sqrt(2) -> mean 2 sqrt(2)
    assert m["mean_norm"] == pytest.approx(2 * math.sqrt(2))


def test_default_dense_threshold_is_ten_percent():
    acc = MetricsAccumulator(d_sae=4)
    acc.update(X, X_HAT, F)
    assert acc.compute()["dense_fraction"] == pytest.approx(0.5)  # latents 0 and 3 (> 0.2 tokens)


def test_batching_does_not_change_the_result():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g) * 4 + 10  # large mean: variance must be about the mean
    x_hat = x + 0.5 * torch.randn(50, 3, generator=g)
    f = torch.relu(torch.randn(50, 6, generator=g))
    whole, parts = MetricsAccumulator(6), MetricsAccumulator(6)
    whole.update(x, x_hat, f)
    for i in range(0, 50, 7):
        parts.update(x[i : i + 7], x_hat[i : i + 7], f[i : i + 7])
    a, b = whole.compute(), parts.compute()
    for k in METRIC_NAMES:
        assert a[k] == pytest.approx(b[k], rel=1e-9), k
    direct = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert a["fvu"] == pytest.approx(float(direct), rel=1e-5)


def test_evaluate_sae_on_an_identity_sae():
    # W_enc = W_dec = I, zero biases: f = relu(x), x_hat = relu(x)
    sae = build_sae(SAEConfig(d_in=2, d_sae=2))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.eye(2))
    x = torch.tensor([[1.0, -1.0], [3.0, 3.0]])
    m = evaluate_sae(sae, [x[:1], x[1:]])
    # errors 1 and 0; mean [2, 1]: sum ||x - mean||^2 = 5 + 5 = 10
    assert m["mse"] == pytest.approx(0.5) and m["fvu"] == pytest.approx(0.1)
    assert m["l0"] == pytest.approx(1.5) and m["dead_fraction"] == 0.0
    assert m["dense_fraction"] == 1.0 and m["mean_norm"] == pytest.approx(2 * math.sqrt(2))


def test_no_tokens_is_an_error():
    with pytest.raises(ValueError, match="no tokens"):
        MetricsAccumulator(3).compute()
