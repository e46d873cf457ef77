"""Fixtures and store readers shared by the fsspec-URL tests (test_storage*.py)."""

import pytest
import torch

from sae_reasoning.activations import ActivationSet
from sae_reasoning.models import ModelSpec
from tests.sae.conftest import write_store


@pytest.fixture
def spec(tiny_model_dirs):
    return ModelSpec("tiny_llama", str(tiny_model_dirs["llama"]), converted_cache=None)


@pytest.fixture
def toy_set(tmp_path):
    g = torch.Generator().manual_seed(1)
    write_store(tmp_path / "acts", torch.randn(2000, 16, generator=g) + 0.5)
    return ActivationSet.open(tmp_path / "acts")


def remote_files(fs, root):
    """{path relative to root: bytes} of every file an fsspec filesystem holds under root."""
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in sorted(fs.find(root))}


def local_files(root):
    """{path relative to root: bytes} of a local folder, leaving out hidden paths."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }
