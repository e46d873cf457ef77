"""Every architecture: the sparse training step equals its dense reference (loss and
gradients), the definitions hold on hand-checkable inputs, and save/load round-trips."""

import json

import pytest
import torch

from sae_reasoning.sae import SAEConfig, TrainHParams, build_sae, sparse_ops
from sae_reasoning.sae.model import canonical_architecture
from sae_reasoning.sae.saelens_format import load_sae, save_sae

ARCHS = ["relu", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk"]


def random_sae(arch, d_in=12, d_sae=40, k=4, seed=0):
    meta = {"matryoshka_widths": [5, 10, 20]} if arch.startswith("matryoshka") else {}
    sae = build_sae(
        SAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            architecture=arch,
            dtype="float64",
            k=k if "topk" in arch else None,
            metadata=meta,
        )
    )
    g = torch.Generator().manual_seed(seed)
    sae.initialize_weights(g, encoder_scale=1.0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g, dtype=torch.float64))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g, dtype=torch.float64))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g, dtype=torch.float64))
        if arch == "jumprelu":
            sae.threshold.copy_(0.3 * torch.rand(d_sae, generator=g, dtype=torch.float64))
    return sae


def grads(sae, x, hp, dead):
    sae.zero_grad(set_to_none=True)
    out = sae.training_loss(x, hp, dead)
    out.loss.backward()
    return out, {k: p.grad.clone() for k, p in sae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("with_dead", [False, True])
def test_sparse_step_equals_dense_reference(arch, with_dead):
    sae = random_sae(arch)
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dead = torch.zeros(40, dtype=torch.bool)
    if with_dead:
        dead[::3] = True
    hp = dict(sparsity_coefficient=0.7, aux_k=5, aux_k_coefficient=0.5, jumprelu_bandwidth=0.2)
    out_s, g_s = grads(sae, x, TrainHParams(**hp, sparse=True), dead)
    out_d, g_d = grads(sae, x, TrainHParams(**hp, sparse=False), dead)
    assert out_s.sparse and not out_d.sparse
    torch.testing.assert_close(out_s.loss, out_d.loss)
    assert set(g_s) == set(g_d) == {n for n, _ in sae.named_parameters()}
    for name in g_d:
        torch.testing.assert_close(g_s[name], g_d[name], msg=name)
    if with_dead and arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        assert out_s.aux_loss > 0


def naive_loss(sae, x, l1=0.7, dead=None, k_aux=5, aux_coef=0.5):
    """The definitions written with dense autograd ops only (no shared code): SAELens's
    ReLU + L1 and TopK + AuxK (with Gao et al.'s ReLU on the auxiliary codes)."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if sae.cfg.architecture == "standard":
        f = torch.relu(pre)
        return ((f @ sae.W_dec + sae.b_dec - x) ** 2).sum(-1).mean() + l1 * f.sum(-1).mean()
    top = pre.topk(sae.cfg.k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    x_hat = f @ sae.W_dec + sae.b_dec
    loss = ((x_hat - x) ** 2).sum(-1).mean()
    if dead is not None:
        aux = torch.where(dead, pre, -torch.inf).topk(k_aux, dim=-1)
        f_aux = torch.zeros_like(pre).scatter(-1, aux.indices, torch.relu(aux.values))
        scale = min(int(dead.sum()) / k_aux, 1.0)
        loss = (
            loss
            + aux_coef * scale * ((f_aux @ sae.W_dec - (x - x_hat).detach()) ** 2).sum(-1).mean()
        )
    return loss


@pytest.mark.parametrize("arch,with_dead", [("relu", False), ("topk", False), ("topk", True)])
def test_fast_gradients_equal_plain_autograd(arch, with_dead):
    sae = random_sae(arch)
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    dead = None
    if with_dead:
        dead = torch.zeros(40, dtype=torch.bool)
        dead[1::4] = True
    hp = TrainHParams(sparsity_coefficient=0.7, aux_k=5, aux_k_coefficient=0.5, sparse=True)
    out, g_fast = grads(sae, x, hp, dead)
    if with_dead:
        assert out.aux_loss > 0
    sae.zero_grad(set_to_none=True)
    naive_loss(sae, x, dead=dead).backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(g_fast[name], p.grad, msg=name)


def test_sparse_ops_match_dense_products():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(9, 30, generator=g) < 0.2
    mask[4] = False  # an empty row
    codes = sparse_ops.Codes.from_mask(mask)
    vals = torch.randn(codes.nnz, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(30, 7, generator=g, dtype=torch.float64, requires_grad=True)
    ref_v, ref_W = vals.detach().clone().requires_grad_(), W.detach().clone().requires_grad_()
    out = sparse_ops.decode(vals, W, codes)
    ref = codes.to_dense(ref_v) @ ref_W
    torch.testing.assert_close(out, ref)
    go = torch.randn_like(out)
    out.backward(go)
    ref.backward(go)
    torch.testing.assert_close(vals.grad, ref_v.grad)
    torch.testing.assert_close(W.grad, ref_W.grad)


def test_definitions_by_hand():
    sae = build_sae(SAEConfig(d_in=2, d_sae=4, architecture="topk", k=2))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.5]]))
        sae.W_dec.copy_(torch.eye(4, 2))
    # pre = [3, 1, -3, 2]: top 2 -> latents 0 and 3
    assert torch.equal(sae.encode(torch.tensor([[3.0, 1.0]])), torch.tensor([[3.0, 0, 0, 2.0]]))
    jr = build_sae(SAEConfig(d_in=2, d_sae=4, architecture="jumprelu"))
    with torch.no_grad():
        jr.W_enc.copy_(sae.W_enc)
        jr.threshold.copy_(torch.tensor([3.5, 0.5, 0.0, 1.0]))
    # pre = [3, 1, -3, 2] vs thresholds [3.5, 0.5, 0, 1]
    assert torch.equal(jr.encode(torch.tensor([[3.0, 1.0]])), torch.tensor([[0.0, 1.0, 0, 2.0]]))
    bt = build_sae(SAEConfig(d_in=2, d_sae=4, architecture="batchtopk", k=1))
    with torch.no_grad():
        bt.W_enc.copy_(sae.W_enc)
    x = torch.tensor([[3.0, 1.0], [0.0, 0.2]])  # pre rows [3,1,-3,2], [0,.2,0,.1]: top 2 in batch
    codes = bt.select(x @ bt.W_enc, TrainHParams())
    assert codes.rows.tolist() == [0, 0] and sorted(codes.cols.tolist()) == [0, 3]


def test_jumprelu_threshold_gets_the_step_pseudo_gradient():
    sae = build_sae(SAEConfig(d_in=1, d_sae=1, architecture="jumprelu", dtype="float64"))
    with torch.no_grad():
        sae.W_enc.fill_(1.0)
        sae.W_dec.fill_(0.0)
        sae.threshold.fill_(1.0)
    x = torch.tensor([[1.01], [0.98], [3.0], [0.2]], dtype=torch.float64)  # 2 within eps/2 = .05
    hp = TrainHParams(sparsity_coefficient=1.0, jumprelu_bandwidth=0.1, sparse=True)
    out = sae.training_loss(x, hp)
    out.loss.backward()
    # mse: x_hat = 0 so dL/df = 0; L0 term: -(1/eps) * 2 tokens in the band / 4 tokens
    torch.testing.assert_close(
        sae.threshold.grad, torch.tensor([-(1 / 0.1) * 2 / 4], dtype=torch.float64)
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_in_saelens_layout(tmp_path, arch):
    sae = random_sae(arch)
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        sae.topk_threshold.fill_(0.25)
    save_sae(sae, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    expected = {"relu": "standard", "topk": "topk"}.get(arch, "jumprelu")
    assert cfg["architecture"] == expected
    if arch == "topk":
        assert cfg["k"] == 4 and cfg["rescale_acts_by_decoder_norm"] is False
    back = load_sae(tmp_path / "s", dtype="float64")
    assert back.cfg.architecture == expected
    x = torch.randn(20, 12, dtype=torch.float64)
    torch.testing.assert_close(back.encode(x), sae.encode(x))
    torch.testing.assert_close(back(x), sae(x))


def test_architecture_names():
    assert canonical_architecture("relu") == "standard"
    assert canonical_architecture("TopK") == "topk"
    with pytest.raises(ValueError, match="gated"):
        canonical_architecture("gated")
