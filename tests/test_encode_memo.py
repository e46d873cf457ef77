"""encode_memo: one SAE encode per tensor inside shared_encodes(), plain encode outside."""

import torch

from sae_reasoning.sae import SAEConfig, build_sae
from sae_reasoning.scoring.encode_memo import encode, shared_encodes


class Counting(torch.nn.Module):
    def __init__(self, sae):
        super().__init__()
        self.sae, self.calls = sae, 0

    def encode(self, x):
        self.calls += 1
        return self.sae.encode(x)


def test_one_encode_per_tensor_within_a_scope():
    sae = build_sae(SAEConfig(d_in=8, d_sae=32, architecture="standard"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(8, 32))
    counted = Counting(sae)
    x, y = torch.randn(3, 8), torch.randn(3, 8)
    with shared_encodes():
        a, b = encode(counted, x), encode(counted, x)
        assert a is b and counted.calls == 1
        torch.testing.assert_close(a, sae.encode(x), rtol=0, atol=0)
        encode(counted, y)
        assert counted.calls == 2  # another tensor, its own encode
        x.mul_(2)  # changed in place: its version moves on, so it is encoded again
        torch.testing.assert_close(encode(counted, x), sae.encode(x), rtol=0, atol=0)
        assert counted.calls == 3
    encode(counted, x), encode(counted, x)
    assert counted.calls == 5  # outside a scope: every call encodes
