"""kedro-viz metadata and previews (issue 15 points 4 and 7), without running kedro-viz:
every catalog entry has a layer and every node a stage tag; the previews are JSON that
kedro-viz can serialise (the slow build itself: tests/test_e2e.py); SAE cfg.json names the
model's id or path, and relabelling an old folder does not retrain it."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from kedro_datasets.pandas import ParquetDataset
from pydantic_core import to_json

import sae_reasoning.sae.training_job as training_job
from sae_reasoning.datasets.activations import ActivationStoreDataset
from sae_reasoning.datasets.previews import ListColumnParquetDataset, MarkdownDataset
from sae_reasoning.datasets.sae import SAEDataset
from sae_reasoning.models.loading import ModelHandle, ModelSpec
from sae_reasoning.preflight import model_aliases, sae_mismatches
from sae_reasoning.sae import SAETrainingJob, TrainingConfig
from sae_reasoning.sae.saelens_format import read_cfg
from tests.sae.conftest import HOOK, toy_set, write_store  # noqa: F401  (toy_set: fixture)
from tests.sae.test_train import TINY
from tests.store_helpers import train_and_save

REPO = Path(__file__).resolve().parents[1]
LAYERS = {
    "raw",
    "intermediate",
    "primary",
    "feature",
    "model_input",
    "models",
    "model_output",
    "reporting",
}
STAGES = {"data_loading", "capture", "sae_training", "causal", "reporting", "validate"}
CFG = TrainingConfig(**TINY, training_tokens=10 * 128)


def preview_type(dataset) -> str:
    """What kedro-viz calls the preview (the name of preview()'s return annotation)."""
    annotation = inspect.signature(dataset.preview).return_annotation
    return getattr(annotation, "__name__", str(annotation))


# -- layers and tags --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted((REPO / "conf").glob("*/catalog*.yml")), ids=lambda p: str(p.relative_to(REPO))
)
def test_every_catalog_entry_has_a_data_engineering_layer(path):
    entries = {k: v for k, v in yaml.safe_load(path.read_text()).items() if not k.startswith("_")}
    layers = {
        k: ((v.get("metadata") or {}).get("kedro-viz") or {}).get("layer")
        for k, v in entries.items()
    }
    assert {k: layer for k, layer in layers.items() if layer not in LAYERS} == {}


def test_every_node_has_its_stage_tag():
    from sae_reasoning.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    for name, stage in [
        ("data_loading", "data_loading"),
        ("capture", "capture"),
        ("sae_training", "sae_training"),
        ("causal", "causal"),
        ("reporting", "reporting"),
        ("validate", "validate"),
    ]:
        assert {
            n.name: n.tags & STAGES for n in pipelines[name].nodes if n.tags & STAGES != {stage}
        } == {}
    assert all(len(n.tags & STAGES) == 1 for n in pipelines["phase4"].nodes)


# -- previews ---------------------------------------------------------------------------------


def test_list_columns_preview_as_json(tmp_path):
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "choices": [["Yes", "No"], ["Yes", "No"], []],
            "choice_targets": [[" Yes", " No"], [" Yes", " No"], []],
            "score": [0.5, float("nan"), 1.0],
        }
    )
    path = str(tmp_path / "prompts.parquet")
    ListColumnParquetDataset(filepath=path).save(frame)
    with pytest.raises(
        Exception
    ):  # why the subclass exists: pyarrow hands list cells over as numpy arrays
        to_json(ParquetDataset(filepath=path).preview())
    preview = ListColumnParquetDataset(filepath=path).preview(nrows=2)
    assert preview_type(ListColumnParquetDataset(filepath=path)) == "TablePreview"
    assert preview["columns"] == ["id", "choices", "choice_targets", "score"]
    assert preview["data"] == [
        ["a", ["Yes", "No"], [" Yes", " No"], 0.5],
        ["b", ["Yes", "No"], [" Yes", " No"], None],
    ]
    json.loads(to_json(preview))
    pd.testing.assert_frame_equal(
        ListColumnParquetDataset(filepath=path).load(), frame
    )  # files unchanged


def test_report_previews_as_markdown_kept_as_text(tmp_path):
    ds = MarkdownDataset(filepath=str(tmp_path / "REPORT.md"))
    ds.save("# Report\n\n| model | Δ |\n|---|---|\n| <model> | -0.2 |\n" + "line\n" * 50)
    assert preview_type(ds) == "HTMLPreview"
    full = ds.preview()
    assert full.startswith("# Report") and "&lt;model&gt;" in full and "<model>" not in full
    short = ds.preview(max_chars=60)
    assert len(short) < 120 and "more characters in the file" in short


def test_activation_store_previews_its_manifests(tmp_path):
    write_store(tmp_path / "acts", torch.randn(300, 8), benchmark="gsm8k")
    write_store(tmp_path / "acts", torch.randn(200, 8), benchmark="math")
    ds = ActivationStoreDataset(path=str(tmp_path / "acts"))
    preview = ds.preview()
    assert preview_type(ds) == "TablePreview"
    rows = [dict(zip(preview["columns"], r)) for r in preview["data"]]
    assert [
        (r["benchmark"], r["hook point"], r["n_tokens"], r["d_model"], r["complete"]) for r in rows
    ] == [("gsm8k", HOOK, 300, 8, True), ("math", HOOK, 200, 8, True)]
    json.loads(to_json(preview))


# -- cfg.json model_name ----------------------------------------------------------------------


def test_sae_cfg_names_the_model_and_an_old_folder_is_relabelled_without_retraining(
    tmp_path, toy_set, caplog, monkeypatch
):
    ds = SAEDataset(str(tmp_path / "sae"))
    train_and_save(
        ds, {HOOK: SAETrainingJob(toy_set, HOOK, CFG)}
    )  # as before: the activations' model (namespace)
    folder = tmp_path / "sae" / HOOK
    assert read_cfg(folder)["metadata"]["model_name"] == "toy"
    weights = (folder / "sae_weights.safetensors").read_bytes()

    def no_training(*a, **k):
        raise AssertionError("a new label must not retrain the SAE")

    monkeypatch.setattr(training_job, "train_sae", no_training)
    with caplog.at_level(logging.INFO, logger="sae_reasoning"):
        train_and_save(
            ds,
            {
                HOOK: SAETrainingJob(
                    toy_set, HOOK, CFG, model_name="HuggingFaceTB/SmolLM2-135M-Instruct"
                )
            },
        )
    assert "reusing SAE" in caplog.text and "model_name set to" in caplog.text
    assert read_cfg(folder)["metadata"]["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (folder / "sae_weights.safetensors").read_bytes() == weights
    assert ds.load()[HOOK].cfg.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    row = dict(zip(*(lambda p: (p["columns"], p["data"][0]))(ds.preview())))
    assert (
        row["hook point"] == HOOK
        and row["d_sae"] == 64
        and row["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_a_new_sae_is_written_with_the_model_id(tmp_path, toy_set):
    ds = SAEDataset(str(tmp_path / "sae"))
    train_and_save(ds, {HOOK: SAETrainingJob(toy_set, HOOK, CFG, model_name="gpt2-medium")})
    assert read_cfg(tmp_path / "sae" / HOOK)["metadata"]["model_name"] == "gpt2-medium"


def test_the_model_name_check_accepts_old_and_new_labels(tiny_model_dirs):
    handle = ModelHandle(
        ModelSpec("tiny_llama", str(tiny_model_dirs["llama"]), converted_cache=None)
    )
    aliases = model_aliases("tiny_llama", handle)
    cfg = lambda name: {
        "d_in": 64,
        "metadata": {"model_name": name, "hook_name": "blocks.1.hook_resid_post"},
    }
    for label in (
        "tiny_llama",
        str(tiny_model_dirs["llama"]),
    ):  # old folders: namespace; new: the path
        assert sae_mismatches(cfg(label), "blocks.1.hook_resid_post", 64, [], aliases) == []
    assert (
        "not this model"
        in sae_mismatches(cfg("gpt2-medium"), "blocks.1.hook_resid_post", 64, [], aliases)[0]
    )
