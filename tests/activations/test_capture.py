import json
import threading

import pytest
import torch

from sae_reasoning.activations import ActivationSet
from sae_reasoning.activations.batching import plan_batches
from sae_reasoning.activations.capture import INLINE_PREFIX, CaptureJob
from sae_reasoning.activations.store import ActivationStore, ShardWriter
from sae_reasoning.activations.tokens import pack_prompts
from sae_reasoning.models import ModelHandle, ModelSpec, capture_residuals
from sae_reasoning.models.hooks import transformer_blocks
from sae_reasoning.scoring import encode_prompts
from tests.prompts_fixture import tiny_prompts


@pytest.fixture
def handle(tiny_model_dirs):
    return ModelHandle(ModelSpec("tiny_llama", str(tiny_model_dirs["llama"]), converted_cache=None))


def test_capture_writes_each_examples_tokens_at_each_layer(tmp_path, handle):
    prompts = tiny_prompts()
    job = CaptureJob(handle, prompts, layers=[1, 2], batch_tokens=60, shard_tokens=40)
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
        # Rows of one example equal a plain forward of the whole (prefix + question + answer)
        # sequence.
        ex = bench.examples[0]
        ids = torch.tensor([bench.prefix + ex.question + ex.answers[ex.gold]])
        ref = capture_residuals(lm.model, ids, None, [1])[1][0]
        mine = meta.example_index == ex.row
        rows = torch.cat(
            [store.shard(i)["activations"] for i in range(len(store.manifest["shards"]))]
        )
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
    assert (
        tmp_path / "arith" / "blocks.1.hook_resid_post" / "manifest.json"
    ).stat().st_mtime_ns == stamp
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
    handle = ModelHandle(
        ModelSpec("tiny_llama", str(tiny_model_dirs["llama"]), converted_cache=None)
    )
    with pytest.raises(PermissionError, match=r"activation folder .*blocked/acts is not writable"):
        CaptureJob(handle, tiny_prompts(), layers=[1]).run(blocker / "acts")
    assert handle._loaded is None


def _files(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_interrupted_capture_resumes_after_its_last_complete_shard_with_identical_files(
    tmp_path, handle, caplog, monkeypatch
):
    prompts = tiny_prompts(n_open=40, n_choice=0)
    job = dict(layers=[1, 2], batch_tokens=64, shard_tokens=32)
    reference = tmp_path / "reference"
    CaptureJob(handle, prompts, **job).run(reference)

    # The batches capture makes (as _capture_benchmark plans them), and its forward passes:
    # one for a cached shared block, then one per batch.
    lm = handle.load()
    bench = pack_prompts(lm.tokenizer, prompts, ["arith"])[0]
    plan = plan_batches(bench.lengths.tolist(), 64, context=len(bench.prefix))
    prefix_passes = 0 if len(bench.prefix) <= INLINE_PREFIX else 1
    handed = 6  # batches given to the shard writer before the interrupt
    n_shards = sum(b.tokens for b in plan[:handed]) // 32  # the shards those rows complete
    assert n_shards >= 2 and len(plan) > handed + 2

    # Ctrl-C in the forward pass of the next batch, with the writer thread as far behind as
    # it can be: held inside its first batch until the capture, interrupted, waits for it.
    # Every shard the handed-over batches complete must still be written and recorded.
    calls, gate = {"n": 0}, threading.Event()

    def interrupt(*_):
        calls["n"] += 1
        if calls["n"] == prefix_passes + handed + 1:
            raise KeyboardInterrupt

    add, join = ShardWriter.add, threading.Thread.join
    monkeypatch.setattr(
        ShardWriter, "add", lambda self, *a, **kw: (gate.wait(60), add(self, *a, **kw))[1]
    )
    monkeypatch.setattr(
        threading.Thread,
        "join",
        lambda self, *a, **kw: (
            gate.set() if self.name == "shard-writer" else None,
            join(self, *a, **kw),
        )[1],
    )
    hook = transformer_blocks(lm.model)[0].register_forward_hook(interrupt)
    out = tmp_path / "resumed"
    try:
        with pytest.raises(KeyboardInterrupt):  # the queue holds every batch handed over
            CaptureJob(handle, prompts, **job, max_pending_batches=handed).run(out)
    finally:
        hook.remove()
        monkeypatch.undo()
    assert calls["n"] == prefix_passes + handed + 1
    for hp in ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post"):
        folder = out / ".arith.tmp" / hp
        partial = json.loads((folder / "manifest.json").read_text())
        assert not partial["complete"] and partial["n_tokens"] == 32 * n_shards
        assert [e["file"] for e in partial["shards"]] == [
            f"shard_{i:05d}.safetensors" for i in range(n_shards)
        ]
        assert sorted(p.name for p in folder.glob("*.safetensors")) == [
            e["file"] for e in partial["shards"]
        ]
        ActivationStore(folder, require_complete=False).verify()
    assert not (out / "arith").exists()

    counter = {"n": 0}
    hook = transformer_blocks(lm.model)[0].register_forward_hook(
        lambda *_: counter.__setitem__("n", counter["n"] + 1)
    )
    try:
        with caplog.at_level("INFO"):
            CaptureJob(handle, prompts, **job).run(out)
    finally:
        hook.remove()
    assert f"resuming after {n_shards} complete shard(s)" in caplog.text
    assert _files(out) == _files(reference)
    # Exactly the batches after the last complete shard ran again (plus the shared block).
    ends = [sum(b.tokens for b in plan[: i + 1]) for i in range(len(plan))]
    assert counter["n"] == prefix_passes + sum(end > 32 * n_shards for end in ends)


def test_a_full_disk_is_a_clear_error_that_keeps_the_complete_shards(tmp_path):
    from sae_reasoning.activations.background import BackgroundWriter
    from sae_reasoning.activations.store import ActivationStore, ShardWriter

    writer = ShardWriter(
        tmp_path / "acts",
        header={"hook_point": "blocks.0.hook_resid_post"},
        d_model=4,
        shard_tokens=8,
    )
    # The kernel's always-full device stands in the second shard's temporary name.
    (tmp_path / "acts" / ".shard_00001.safetensors.tmp").symlink_to("/dev/full")
    sink = BackgroundWriter({0: writer})
    rows = lambda n: dict(
        activations=torch.randn(n, 4),
        example_index=torch.zeros(n),
        position=torch.arange(n),
        token_id=torch.zeros(n),
    )
    with pytest.raises(
        OSError, match=r"cannot write activation shard .*shard_00001.safetensors: the disk is full"
    ):
        for _ in range(3):
            sink.put({0: rows(8)})
        sink.close()
    sink.abort()
    store = ActivationStore(tmp_path / "acts", require_complete=False)
    assert [s["file"] for s in store.manifest["shards"]] == ["shard_00000.safetensors"]
    store.verify()


def test_not_enough_free_space_fails_before_the_first_batch(tmp_path):
    import shutil

    from sae_reasoning.activations.capture import _check_free_space

    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(
        OSError,
        match=r"capture m: the activations need about .* GiB in .* but only .* GiB are free",
    ):
        _check_free_space(tmp_path, 2 * free, "m")
    _check_free_space(tmp_path, 1 << 20, "m")


def test_empty_prompt_table_is_named_before_the_model_loads(tmp_path, handle):
    fresh = ModelHandle(handle.spec)
    with pytest.raises(ValueError, match="capture tiny_llama: the prompts table is empty"):
        CaptureJob(fresh, tiny_prompts().iloc[:0], layers=[1]).run(tmp_path)
    assert fresh._loaded is None


def test_manifest_states_the_massive_activation_rule_and_the_batching(tmp_path, handle):
    CaptureJob(handle, tiny_prompts(), layers=[1], batch_tokens=50, shard_tokens=16).run(tmp_path)
    m = json.loads((tmp_path / "arith" / "blocks.1.hook_resid_post" / "manifest.json").read_text())
    assert m["batch_tokens"] == 50 and m["shard_tokens"] == 16
    rule = m["massive_activations"]
    assert rule["default"] == {"exclude_first_position": True, "max_norm_ratio": 10.0}
    assert rule["n_first_position"] == 0  # position 0 lies in the shared block, never stored
    assert rule["n_excluded_by_default"] == rule["n_over_max_norm_ratio"]


def test_a_prompt_over_the_context_window_is_named_before_any_batch(tmp_path, handle):
    prompts = tiny_prompts()
    prompts.loc[3, "prompt"] = prompts.loc[3, "prompt"].replace(
        "What is", "What is " + "one plus " * 700
    )
    with pytest.raises(
        ValueError,
        match=r"tiny_llama: prompt arith-003 \(arith\) is \d+ tokens with its answer, "
        r"over the model's context of 2048",
    ):
        CaptureJob(handle, prompts, layers=[1]).run(tmp_path)
    assert not any(tmp_path.rglob("*.safetensors"))


def test_a_short_shared_block_runs_inline_and_is_still_left_out(tmp_path, handle):
    prompts = tiny_prompts(n_open=6, n_choice=0)
    prompts["prompt"] = "Sum.\n\n" + prompts["prompt"].str.split("\n\n").str[-1]
    CaptureJob(handle, prompts, layers=[1], batch_tokens=40).run(tmp_path)
    store = ActivationSet.open(tmp_path).stores["arith"]["blocks.1.hook_resid_post"]
    lm = handle.load()
    bench = encode_prompts(lm.tokenizer, prompts)[0]
    assert 0 < len(bench.prefix) <= 16  # inline, not cached
    meta = store.metadata()
    rows = store.shard(0)["activations"]
    for ex in bench.examples:
        ids = torch.tensor([bench.prefix + ex.question + ex.answers[0]])
        ref = capture_residuals(lm.model, ids, None, [1])[1][0]
        mine = (meta.example_index == ex.row).to_numpy().copy()
        torch.testing.assert_close(
            rows[torch.from_numpy(mine)], ref[meta.position[mine].to_numpy()], atol=1e-4, rtol=1e-4
        )
    assert meta.position.min() == len(bench.prefix)
    assert store.manifest["shared_block"]["n_tokens"] == len(bench.prefix)
