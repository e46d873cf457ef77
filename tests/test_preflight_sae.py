"""Issue 14 item 5: SAE folders of another model are caught before capture runs."""

from __future__ import annotations

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import pipeline as namespaced

from sae_reasoning.datasets.model import ModelDataset
from sae_reasoning.datasets.sae import SAEDataset
from sae_reasoning.hooks import SAECheckHook
from sae_reasoning.models.loading import ModelHandle, ModelSpec
from sae_reasoning.pipelines import causal, sae_training
from sae_reasoning.preflight import PreflightError, check_sae_folders
from sae_reasoning.sae import SAEConfig, build_sae

HOOK = "blocks.1.hook_resid_post"  # tiny models: 4 blocks, d_model 64


def write_sae(root, d_in: int, model_name: str | None, hook: str = HOOK):
    sae = build_sae(SAEConfig(d_in=d_in, d_sae=2 * d_in, model_name=model_name, hook_name=hook))
    SAEDataset(str(root)).save({hook: sae})
    return root / hook


@pytest.fixture
def llama(tiny_model_dirs):
    return ModelHandle(ModelSpec("tiny", str(tiny_model_dirs["llama"]), converted_cache=None))


def test_sae_of_another_width_names_folder_model_and_mismatch(tmp_path, llama):
    folder = write_sae(tmp_path / "sae", d_in=96, model_name="other_model")
    stored = SAEDataset(str(tmp_path / "sae")).stored_configs()
    [line] = check_sae_folders("tiny", llama, {"layers": [1]}, stored, [HOOK])
    assert f"SAE folder {folder.as_posix()} does not fit model 'tiny'" in line
    assert str(llama.spec.pretrained_model_name_or_path) in line
    assert "d_in 96 but the model's d_model is 64" in line
    assert "cfg.json model_name is 'other_model', not this model" in line


@pytest.mark.parametrize("name", ["tiny", "llama", None])
def test_sae_of_this_model_passes(tmp_path, llama, name):
    # cfg.json model_name: the namespace (what training here writes), the model's folder
    # name / id, or absent (nothing to compare).
    write_sae(tmp_path / "sae", d_in=64, model_name=name)
    stored = SAEDataset(str(tmp_path / "sae")).stored_configs()
    assert check_sae_folders("tiny", llama, {"layers": [1]}, stored, [HOOK]) == []


def test_transfer_overrides_only_the_model_name(tmp_path, llama):
    write_sae(tmp_path / "sae", d_in=64, model_name="gpt2-small")
    stored = SAEDataset(str(tmp_path / "sae")).stored_configs()
    assert check_sae_folders("tiny", llama, {"layers": [1]}, stored, [HOOK])
    assert (
        check_sae_folders("tiny", llama, {"layers": [1], "sae_transfer": True}, stored, [HOOK])
        == []
    )
    write_sae(tmp_path / "wide", d_in=96, model_name="gpt2-small")
    wide = SAEDataset(str(tmp_path / "wide")).stored_configs()
    [line] = check_sae_folders("tiny", llama, {"layers": [1], "sae_transfer": True}, wide, [HOOK])
    assert "d_in 96" in line and "model_name" not in line


def test_sae_at_another_hook_point(tmp_path, llama):
    write_sae(tmp_path / "sae", d_in=64, model_name="tiny", hook="blocks.3.hook_resid_post")
    stored = SAEDataset(str(tmp_path / "sae")).stored_configs()
    [line] = check_sae_folders("tiny", llama, {"layers": [1]}, stored, [HOOK])
    assert (
        f"hook point blocks.3.hook_resid_post is not one of the configured hook points ['{HOOK}']"
        in line
    )


def _catalog(tmp_path, model_dir, params):
    return DataCatalog(
        {
            "tiny.model": ModelDataset(
                name="tiny", pretrained_model_name_or_path=str(model_dir), converted_cache=None
            ),
            "tiny.sae": SAEDataset(str(tmp_path / "sae")),
            "params:models.tiny": MemoryDataset(params),
            "params:sae_training": MemoryDataset({}),
        }
    )


def _ns(base):
    return namespaced(
        base,
        namespace="tiny",
        inputs=base.inputs() & {"prompts"},
        parameters={
            p: ("params:models.tiny" if p == "params:model" else p)
            for p in base.inputs()
            if p.startswith("params:")
        },
    )


def test_hook_stops_a_run_that_would_use_the_sae_as_it_is(tmp_path, tiny_model_dirs, caplog):
    write_sae(tmp_path / "sae", d_in=96, model_name="smollm2_135m")
    catalog = _catalog(tmp_path, tiny_model_dirs["llama"], {"layers": [1]})
    hook = SAECheckHook()
    # causal alone reads tiny.sae from disk: stop before any node runs
    with pytest.raises(
        PreflightError,
        match=r"(?s)SAE folder .*/sae/blocks.1.hook_resid_post "
        r"does not fit model 'tiny'.*d_in 96",
    ):
        hook.before_pipeline_run(
            {"only_missing_outputs": False}, _ns(causal.create_pipeline()), catalog
        )
    # sae_training + causal: the SAE is trained again, which replaces it -> logged only
    both = _ns(sae_training.create_pipeline()) + _ns(causal.create_pipeline())
    with caplog.at_level("INFO", logger="sae_reasoning.hooks"):
        hook.before_pipeline_run({"only_missing_outputs": False}, both, catalog)
    assert "trains that SAE again" in caplog.text
    # ... unless --only-missing-outputs keeps the existing folder
    with pytest.raises(PreflightError, match="d_in 96"):
        hook.before_pipeline_run({"only_missing_outputs": True}, both, catalog)
    # the deliberate-transfer switch does not excuse a width mismatch
    catalog = _catalog(tmp_path, tiny_model_dirs["llama"], {"layers": [1], "sae_transfer": True})
    with pytest.raises(PreflightError, match="d_in 96"):
        hook.before_pipeline_run({}, _ns(causal.create_pipeline()), catalog)


def test_hook_passes_a_fitting_sae(tmp_path, tiny_model_dirs):
    write_sae(tmp_path / "sae", d_in=64, model_name="tiny")
    catalog = _catalog(tmp_path, tiny_model_dirs["llama"], {"layers": [1]})
    SAECheckHook().before_pipeline_run({}, _ns(causal.create_pipeline()), catalog)
