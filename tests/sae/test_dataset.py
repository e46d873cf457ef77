"""SAEDataset + SAETrainingJob: fingerprint reuse, atomic folder writes, crash recovery."""

import json
import logging

import pytest
import torch
from kedro.io import DatasetError

import sae_reasoning.sae.training_job as training_job
from sae_reasoning.datasets.sae import SAEDataset
from sae_reasoning.sae import SAETrainingJob, TrainingConfig, TrainingDivergedError, load_sae
from sae_reasoning.sae.training_job import describe_changes, recover_sae_folder
from tests.sae.conftest import HOOK
from tests.sae.test_train import TINY, NaNAt
from tests.store_helpers import train_and_save

CFG = TrainingConfig(**TINY, training_tokens=10 * 128)


def weights_of(folder):
    return {k: v.clone() for k, v in load_sae(folder).state_dict().items()}


def test_save_trains_and_load_returns_saes_with_logs(tmp_path, toy_set):
    ds = SAEDataset(str(tmp_path / "sae"))
    assert not ds.exists()
    train_and_save(ds, {HOOK: SAETrainingJob(toy_set, HOOK, CFG)})
    folder = tmp_path / "sae" / HOOK
    names = {p.name for p in folder.iterdir()}
    assert {"cfg.json", "sae_weights.safetensors", "training_summary.json", "checkpoints"} <= names
    assert ds.exists()
    saes = ds.load()
    sae = saes[HOOK]
    assert sae.cfg.hook_name == HOOK and sae.cfg.d_in == 16 and sae.cfg.d_sae == 64
    assert sae.cfg.model_name == "toy" and sae.cfg.hook_layer == 3
    assert len(sae.training_log["loss"]) == 10 and len(sae.training_log["l0"]) == 10
    assert sae.training_summary["steps"] == 10 and sae.training_summary["finished"]
    assert "history" not in sae.training_summary
    assert ds._describe()["path"].endswith("sae")


def test_unchanged_job_is_reused(tmp_path, toy_set, caplog, monkeypatch):
    ds = SAEDataset(str(tmp_path / "sae"))
    train_and_save(ds, {HOOK: SAETrainingJob(toy_set, HOOK, CFG)})
    before = weights_of(tmp_path / "sae" / HOOK)

    def no_training(*a, **k):
        raise AssertionError("should have reused the finished SAE")

    monkeypatch.setattr(training_job, "train_sae", no_training)
    # an operational change (device, checkpoint cadence) keeps the fingerprint
    same = TrainingConfig(
        **{**TINY, "checkpoint_every": 3, "device": "cpu"}, training_tokens=10 * 128
    )
    with caplog.at_level(logging.INFO, logger="sae_reasoning"):
        train_and_save(ds, {HOOK: SAETrainingJob(toy_set, HOOK, same)})
    assert "reusing SAE" in caplog.text and "fingerprint match" in caplog.text
    after = weights_of(tmp_path / "sae" / HOOK)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_changed_config_retrains_and_says_why(tmp_path, toy_set, caplog):
    ds = SAEDataset(str(tmp_path / "sae"))
    train_and_save(ds, {HOOK: SAETrainingJob(toy_set, HOOK, CFG)})
    changed = TrainingConfig(**{**TINY, "l1_coefficient": 2.0}, training_tokens=10 * 128)
    with caplog.at_level(logging.INFO, logger="sae_reasoning"):
        train_and_save(ds, {HOOK: SAETrainingJob(toy_set, HOOK, changed)})
    assert "config changed: l1_coefficient 1.0 -> 2.0" in caplog.text
    assert ds.load()[HOOK].training_summary["config"]["l1_coefficient"] == 2.0


def test_change_description_formats_small_floats():
    old = {
        "trainer_version": 1,
        "hook_point": "h",
        "config": {"l1_coefficient": 1e-4, "lr": 4e-4},
        "activations": {"gsm8k": {"n_tokens": 5}},
    }
    new = {
        **old,
        "config": {"l1_coefficient": 2e-4, "lr": 4e-4},
        "activations": {"gsm8k": {"n_tokens": 6}},
    }
    assert describe_changes(old, new) == (
        "config changed: l1_coefficient 1e-4 -> 2e-4; activations changed (gsm8k)"
    )


def test_failed_training_keeps_the_finished_sae(tmp_path, toy_set):
    ds = SAEDataset(str(tmp_path / "sae"))
    train_and_save(ds, {HOOK: SAETrainingJob(toy_set, HOOK, CFG)})
    folder = tmp_path / "sae" / HOOK
    before = weights_of(folder)
    changed = TrainingConfig(**{**TINY, "l1_coefficient": 3.0}, training_tokens=10 * 128)
    with pytest.raises(
        TrainingDivergedError, match="non-finite activations .* at step 7"
    ):  # raised in the node
        train_and_save(ds, {HOOK: SAETrainingJob(NaNAt(toy_set, step=7), HOOK, changed)})
    after = weights_of(folder)  # the previous finished SAE is intact and still loads
    assert all(torch.equal(before[k], after[k]) for k in before)
    summary = json.loads((folder / "training_summary.json").read_text())
    assert summary["config"]["l1_coefficient"] == 1.0
    assert (folder / "checkpoints" / "step_000000005.pt").is_file()  # the new run can resume
    assert not any(p.name.startswith(".") for p in (tmp_path / "sae").iterdir())


def test_interrupted_swaps_are_completed_or_rolled_back(tmp_path, toy_set):
    ds = SAEDataset(str(tmp_path / "sae"))
    train_and_save(ds, {HOOK: SAETrainingJob(toy_set, HOOK, CFG)})
    folder = tmp_path / "sae" / HOOK
    staging, old = folder.with_name(f".{HOOK}.staging"), folder.with_name(f".{HOOK}.old")

    # crash between "folder -> .old" and "staging -> folder": the complete staging wins
    import shutil

    shutil.copytree(folder, staging)
    folder.rename(old)
    assert ds.load()[HOOK].cfg.hook_name == HOOK
    assert folder.is_dir() and not staging.exists() and not old.exists()

    # crash while writing staging (no summary yet): staging is dropped, folder untouched
    shutil.copytree(folder, staging)
    (staging / "training_summary.json").unlink()
    recover_sae_folder(folder)
    assert not staging.exists() and (folder / "training_summary.json").is_file()


def test_plain_saes_and_the_index(tmp_path, toy_set):
    ds = SAEDataset(str(tmp_path / "sae"))
    train_and_save(ds, {HOOK: SAETrainingJob(toy_set, HOOK, CFG)})
    sae = ds.load()[HOOK]
    other = "blocks.4.hook_resid_post"
    ds.save({other: sae})  # a plain SAE is written as is
    assert list(ds.load()) == [other]  # the last save decides what load() returns
    assert (tmp_path / "sae" / HOOK / "cfg.json").is_file()  # ... but nothing is deleted
    reloaded = ds.load()[other]
    assert torch.equal(reloaded.W_dec, sae.W_dec)
    with pytest.raises(DatasetError, match="cannot save"):
        ds.save({other: "not an SAE"})


def test_load_of_an_empty_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no SAEs"):
        SAEDataset(str(tmp_path / "nothing")).load()
