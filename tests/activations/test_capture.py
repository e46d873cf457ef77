import json
import shutil

import pytest
import torch

from sae_reasoning.activations import ActivationSet
from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.models import ModelHandle, ModelSpec, capture_residuals
from sae_reasoning.scoring import encode_prompts
from tests.prompts_fixture import tiny_prompts


@pytest.fixture
def handle(tiny_model_dirs):
    return ModelHandle(ModelSpec("tiny_llama", str(tiny_model_dirs["llama"]), converted_cache=None))


def test_capture_writes_each_examples_tokens_at_each_layer(tmp_path, handle):
    prompts = tiny_prompts()
    job = CaptureJob(handle, prompts, layers=[1, 2], batch_size=3, shard_tokens=40)
    summary = job.run(tmp_path)
    assert set(summary["captured"]) == {"arith", "logic"}
    acts = ActivationSet.open(tmp_path)
    assert acts.hook_points == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    lm = handle.load()
    encoded = encode_prompts(lm.tokenizer, prompts)
    for bench in encoded:
        store = acts.stores[bench.name]["blocks.1.hook_resid_post"]
        expected = sum(len(e.question) + len(e.answers[e.gold]) for e in bench.examples)
        assert store.n_tokens == expected
        meta = store.metadata()
        # Rows of one example equal a plain forward of the whole (prefix + question + answer) sequence.
        ex = bench.examples[0]
        ids = torch.tensor([bench.prefix + ex.question + ex.answers[ex.gold]])
        ref = capture_residuals(lm.model, ids, None, [1])[1][0]
        mine = meta.example_index == ex.row
        rows = torch.cat([store.shard(i)["activations"] for i in range(len(store.manifest["shards"]))])
        rows = rows[torch.from_numpy(mine.to_numpy().copy())]
        pos = torch.tensor(meta.position[mine].to_numpy())
        torch.testing.assert_close(rows, ref[pos], atol=1e-4, rtol=1e-4)
        assert pos.min() == len(bench.prefix)  # the shared few-shot block is not stored
        assert store.manifest["shared_block"]["n_tokens"] == len(bench.prefix)


def test_second_run_reuses_and_a_change_recaptures(tmp_path, handle, caplog):
    prompts = tiny_prompts()
    CaptureJob(handle, prompts, layers=[1]).run(tmp_path)
    stamp = (tmp_path / "arith" / "blocks.1.hook_resid_post" / "manifest.json").stat().st_mtime_ns
    again = CaptureJob(handle, prompts, layers=[1]).run(tmp_path)
    assert again["reused"] == ["arith", "logic"] and not again["captured"]
    assert (tmp_path / "arith" / "blocks.1.hook_resid_post" / "manifest.json").stat().st_mtime_ns == stamp
    changed = prompts.copy()
    changed.loc[0, "prompt"] += " "
    third = CaptureJob(handle, changed, layers=[1]).run(tmp_path)
    assert "arith" in third["captured"]


def test_failed_capture_leaves_the_earlier_complete_one_intact(tmp_path, handle):
    prompts = tiny_prompts()
    CaptureJob(handle, prompts, layers=[1]).run(tmp_path)
    before = (tmp_path / "arith" / "blocks.1.hook_resid_post" / "manifest.json").read_text()
    with pytest.raises(Exception, match=r"layer\(s\) \[9\] out of range"):
        CaptureJob(handle, prompts, layers=[9]).run(tmp_path)
    assert (tmp_path / "arith" / "blocks.1.hook_resid_post" / "manifest.json").read_text() == before
    ActivationSet.open(tmp_path)


def test_unwritable_folder_is_a_clear_error_before_the_model_loads(tmp_path, tiny_model_dirs):
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the activation folder should go")
    handle = ModelHandle(ModelSpec("tiny_llama", str(tiny_model_dirs["llama"]), converted_cache=None))
    with pytest.raises(PermissionError, match=r"activation folder .*blocked/acts is not writable"):
        CaptureJob(handle, tiny_prompts(), layers=[1]).run(blocker / "acts")
    assert handle._loaded is None
