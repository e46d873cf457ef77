import pytest
import torch

from sae_reasoning.sae import SAEConfig, StandardSAE, build_sae
from sae_reasoning.sae.model import canonical_architecture


def tiny_sae() -> StandardSAE:
    sae = build_sae(SAEConfig(d_in=2, d_sae=3, hook_name="blocks.0.hook_resid_post"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.5]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
        sae.b_dec.copy_(torch.tensor([1.0, 1.0]))
    return sae


def test_encode_decode_by_hand():
    sae = tiny_sae()
    x = torch.tensor([[3.0, 2.0]])
    # x - b_dec = [2, 1]; @ W_enc = [2, 2, -1]; + b_enc = [2, 1, -0.5]; relu -> [2, 1, 0]
    f = sae.encode(x)
    assert torch.equal(f, torch.tensor([[2.0, 1.0, 0.0]]))
    # f @ W_dec = [2, 1]; + b_dec = [3, 2]
    assert torch.equal(sae.decode(f), torch.tensor([[3.0, 2.0]]))
    assert torch.equal(sae(x), sae.decode(sae.encode(x)))
    # apply_b_dec_to_input=False skips the centring
    sae.cfg.apply_b_dec_to_input = False
    # [3, 2] @ W_enc = [3, 4, -1]; + b_enc = [3, 3, -0.5]; relu -> [3, 3, 0]
    assert torch.equal(sae.encode(x), torch.tensor([[3.0, 3.0, 0.0]]))


def test_parameter_names_and_shapes_match_saelens():
    sae = build_sae(SAEConfig(d_in=5, d_sae=7))
    shapes = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    assert shapes == {"W_enc": (5, 7), "b_enc": (7,), "W_dec": (7, 5), "b_dec": (5,)}


def test_fold_scaling_factor_gives_raw_unit_sae():
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(d_in=4, d_sae=6))
    sae.initialize_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(4))
        sae.b_enc.copy_(torch.randn(6) * 0.1)
    x = torch.randn(10, 4) * 7
    s = 0.25
    f_norm, x_hat_norm = sae.encode(x * s), sae(x * s)
    sae.fold_activation_norm_scaling_factor(s)
    torch.testing.assert_close(sae.encode(x), f_norm)
    torch.testing.assert_close(sae(x), x_hat_norm / s)
    assert sae.cfg.normalize_activations == "none"
    assert sae.cfg.metadata["norm_scaling_factor"] == s


def test_gradient_projection_and_unit_norm():
    sae = build_sae(SAEConfig(d_in=8, d_sae=16))
    sae.initialize_weights(torch.Generator().manual_seed(0))
    sae.W_dec.grad = torch.randn(16, 8)
    sae.remove_gradient_parallel_to_decoder_directions()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-5
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.set_decoder_norm_to_unit_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(16))


def test_architecture_names():
    assert canonical_architecture("relu") == "standard"
    assert canonical_architecture("standard") == "standard"
    assert canonical_architecture("batchtopk") == "batchtopk"
    with pytest.raises(ValueError, match="gated"):
        canonical_architecture("gated")


def test_wrong_input_width_is_a_clear_error():
    with pytest.raises(ValueError, match="d_model=3.*d_in=2"):
        tiny_sae().encode(torch.zeros(1, 3))
