"""A model path to a missing folder is reported as such (issue 14 item 8)."""

from __future__ import annotations

import pytest

from sae_reasoning.models.loading import (
    ModelHandle,
    ModelLoadError,
    ModelSpec,
    load_model,
    looks_like_path,
)
from sae_reasoning.preflight import check_model
from tests.tiny import FAMILIES


@pytest.mark.parametrize(
    "src", ["data/06_models/no_such_model", "./no_such_model", "/nowhere/at/all"]
)
def test_missing_model_folder_is_named_without_hub_message(tmp_path, src):
    spec = ModelSpec("mine", src, converted_cache=None)
    for call in (ModelHandle(spec).config, lambda: load_model(spec, "cpu")):
        with pytest.raises(ModelLoadError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(f"model 'mine': the folder {src} does not exist")
        assert "Repo id" not in msg and "repo_name" not in msg


def test_missing_folder_in_preflight_result():
    result = check_model(
        ModelHandle(ModelSpec("mine", "models/tiny/v1", converted_cache=None)), {"layers": [0]}
    )
    assert result["ok"] is False
    assert result["error"].startswith(
        "model 'mine': the folder models/tiny/v1 does not exist (relative to "
    )


def test_hub_ids_are_not_paths():
    assert not looks_like_path("gpt2-medium")
    assert not looks_like_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert looks_like_path("data/06_models/x") and looks_like_path("./x") and looks_like_path("/x")


def test_existing_folder_still_loads(tiny_model_dirs):
    spec = ModelSpec("tiny", str(tiny_model_dirs["llama"]), converted_cache=None)
    assert ModelHandle(spec).config().hidden_size == 64


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_estimate_counts_what_loading_holds(tiny_lms, family):
    """The preflight's count from the config alone (meta device) equals the loaded model's,
    a tied unembedding counted once (gpt2 and gemma tie theirs)."""
    from sae_reasoning.preflight import estimate_parameters

    model = tiny_lms[family].model
    assert estimate_parameters(model.config) == sum(p.numel() for p in model.parameters())
