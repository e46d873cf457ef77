"""SAELens itself (sae-lens is in the test extra) loads every architecture we save and
computes the same features and reconstructions."""

import pytest
import sae_lens  # ~10-20 s to import: one test does all architectures
import torch

from sae_reasoning.sae.saelens_format import save_sae
from tests.sae.test_architectures import ARCHS, random_sae


@pytest.mark.slow
def test_saelens_loads_our_folders(tmp_path):
    expected_class = {"relu": "StandardSAE", "topk": "TopKSAE"}
    for arch in ARCHS:
        sae = random_sae(arch)
        if arch in ("batchtopk", "matryoshka_batchtopk"):
            sae.topk_threshold.fill_(0.25)
        save_sae(sae, tmp_path / arch)
        theirs = sae_lens.SAE.load_from_disk(str(tmp_path / arch), device="cpu")
        assert type(theirs).__name__ == expected_class.get(arch, "JumpReLUSAE"), arch
        x = torch.randn(20, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        xs = x.to(theirs.W_enc.dtype)
        torch.testing.assert_close(theirs.encode(xs).double(), sae.encode(x), msg=arch)
        torch.testing.assert_close(theirs(xs).double(), sae(x), msg=arch)
