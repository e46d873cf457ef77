import os

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.s3_server import ds_args, s3  # noqa: E402, F401  (fixtures)
from tests.tiny import FAMILIES, save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """family -> folder of a tiny random model (HF layout, real tokenizer)."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {f: save_tiny_model(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="session")
def tiny_lms(tiny_model_dirs):
    from sae_reasoning.models import ModelHandle, ModelSpec

    return {
        f: ModelHandle(ModelSpec(f, str(d), converted_cache=None)).load("cpu")
        for f, d in tiny_model_dirs.items()
    }


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spinning on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
