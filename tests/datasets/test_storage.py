"""The project's datasets at fsspec URLs: fsspec's real in-memory filesystem (memory://)
stands in for s3:// / gcs://, and file:// URLs stay plain local paths."""

import importlib.util
import json
import logging
import pickle
import sys
import zipfile

import fsspec
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, DatasetError

from sae_reasoning.activations import ActivationSet
from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.baseline import BaselineJob
from sae_reasoning.datasets.activations import ActivationStoreDataset
from sae_reasoning.datasets.sae import SAEDataset
from sae_reasoning.datasets.scores import ScoresDataset
from sae_reasoning.datasets.storage import Storage
from sae_reasoning.models import ModelHandle, ModelSpec
from sae_reasoning.models.hooks import transformer_blocks
from sae_reasoning.sae import SAETrainingJob, TrainingConfig
from tests.datasets.conftest import local_files, remote_files
from tests.prompts_fixture import tiny_prompts
from tests.sae.conftest import HOOK
from tests.sae.test_train import TINY
from tests.store_helpers import capture_and_save, score_and_save, train_and_save

HOOK1 = "blocks.1.hook_resid_post"


@pytest.fixture
def mem():
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


# -- locations ------------------------------------------------------------------------------
def test_protocol_follows_the_path(tmp_path, mem):
    for make in (
        lambda p: ActivationStoreDataset(path=p),
        lambda p: SAEDataset(p),
        lambda p: ScoresDataset(filepath=p),
    ):
        local, url, memory = (
            make(str(tmp_path / "x")),
            make(f"file://{tmp_path}/x"),
            make("memory:///b/x"),
        )
        assert local._protocol == url._protocol == "file" and memory._protocol == "memory"
        assert local._path == url._path == tmp_path / "x"  # file:// is used in place, no staging
        assert "memory:///b/x" in str(memory._describe())
        shipped = pickle.loads(pickle.dumps(memory))  # as runners send datasets to workers
        assert shipped._protocol == "memory" and shipped._describe() == memory._describe()


def test_file_url_writes_in_place(tmp_path, spec):
    ds = ActivationStoreDataset(path=f"file://{tmp_path}/acts")
    capture_and_save(ds, CaptureJob(ModelHandle(spec), tiny_prompts(), layers=[1]))
    assert (tmp_path / "acts" / "arith" / HOOK1 / "manifest.json").is_file()
    assert ds.exists() and ds.load().benchmarks == ["arith", "logic"]


def test_catalog_entries_take_credentials_and_fs_args(tmp_path, mem):
    catalog = DataCatalog.from_config(
        {
            "scores": {
                "type": "sae_reasoning.datasets.scores.ScoresDataset",
                "filepath": "memory:///b/m/scores.parquet",
                "credentials": "mem",
                "fs_args": {"skip_instance_cache": True},
            },
            "acts": {
                "type": "sae_reasoning.datasets.activations.ActivationStoreDataset",
                "path": "memory:///b/acts/m",
                "local_cache": str(tmp_path / "stage"),
            },
        },
        credentials={"mem": {}},
    )
    catalog.save("scores", pd.DataFrame({"a": [1, 2]}))
    assert catalog.load("scores")["a"].tolist() == [1, 2]
    assert mem.exists("/b/m/scores.parquet") and not catalog.exists("acts")


def test_a_protocol_whose_package_is_missing_is_named_at_construction(monkeypatch):
    if importlib.util.find_spec("s3fs") is not None:  # the test extra installs it: hide it
        monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` raises ImportError
        registry = sys.modules["fsspec.registry"]._registry  # fsspec keeps the imported class
        monkeypatch.delitem(registry, "s3", raising=False)
    with pytest.raises(
        DatasetError, match=r"s3://bucket/acts/m: the s3:// protocol needs .*pip install s3fs"
    ):
        ActivationStoreDataset(path="s3://bucket/acts/m")
    with pytest.raises(DatasetError, match=r"nosuch://x/y: fsspec does not know the protocol"):
        ScoresDataset(filepath="nosuch://x/y")


def test_a_url_that_cannot_take_files_fails_before_the_model_loads(tmp_path, spec):
    archive = tmp_path / "acts.zip"  # fsspec's zip filesystem opened read-only
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("acts/readme.txt", "read-only")
    handle = ModelHandle(spec)
    ds = ActivationStoreDataset(
        path="zip:///acts", fs_args={"fo": str(archive)}, local_cache=str(tmp_path / "stage")
    )
    with pytest.raises(DatasetError, match=r"activation store zip:///acts is not writable"):
        capture_and_save(ds, CaptureJob(handle, tiny_prompts(), layers=[1]))
    assert handle._loaded is None


# -- activations ----------------------------------------------------------------------------
def capture_equals_a_local_capture_and_is_reused(tmp_path, spec, url, stored, **ds_args):
    """Capture into `url` (ds_args: credentials / fs_args) and check it against a local
    capture; `stored()` is {path relative to url: bytes} as the storage holds them."""
    prompts = tiny_prompts()
    job = dict(layers=[1, 2], batch_tokens=60, shard_tokens=40)
    local = ActivationStoreDataset(path=str(tmp_path / "local"))
    capture_and_save(local, CaptureJob(ModelHandle(spec), prompts, **job))

    remote = ActivationStoreDataset(path=url, local_cache=str(tmp_path / "stage"), **ds_args)
    assert not remote.exists()
    capture_and_save(remote, CaptureJob(ModelHandle(spec), prompts, **job))
    assert remote.exists()
    # The URL holds exactly the local capture's files: no staging or probe names left.
    assert stored() == local_files(tmp_path / "local")

    # Loading elsewhere (an empty staging folder) downloads and opens the same tensors.
    reader = ActivationStoreDataset(path=url, local_cache=str(tmp_path / "elsewhere"), **ds_args)
    got, want = reader.load(), ActivationSet.open(tmp_path / "local")
    assert got.benchmarks == want.benchmarks and got.hook_points == want.hook_points
    for bench in want.benchmarks:
        for hook in want.hook_points:
            a, b = got.stores[bench][hook], want.stores[bench][hook]
            assert a.folder.is_relative_to(tmp_path / "elsewhere")
            for i in range(len(b.manifest["shards"])):
                for k, v in b.shard(i).items():
                    assert torch.equal(a.shard(i)[k], v)
    reader.load()  # a second load finds every shard in place

    # A second save, from a machine with nothing staged, reuses: no forward pass, no shard download.
    fresh = ModelHandle(spec)
    again = ActivationStoreDataset(path=url, local_cache=str(tmp_path / "stage2"), **ds_args)
    capture_and_save(again, CaptureJob(fresh, prompts, **job))
    assert fresh._loaded is None
    assert {p.name for p in (tmp_path / "stage2").rglob("*") if p.is_file()} == {"manifest.json"}
    assert stored() == local_files(tmp_path / "local")


def test_capture_into_memory_url_equals_a_local_capture_and_is_reused(tmp_path, mem, spec):
    capture_equals_a_local_capture_and_is_reused(
        tmp_path, spec, "memory:///bucket/acts/tiny", lambda: remote_files(mem, "/bucket/acts/tiny")
    )


def test_changed_shard_on_the_url_is_downloaded_again(tmp_path, mem, spec):
    remote = ActivationStoreDataset(path="memory:///b/acts", local_cache=str(tmp_path / "stage"))
    capture_and_save(remote, CaptureJob(ModelHandle(spec), tiny_prompts(), layers=[1]))
    shard = tmp_path / "stage" / "arith" / HOOK1 / "shard_00000.safetensors"
    good = shard.read_bytes()
    # the save recorded the uploaded shards as verified: the next load does not hash them
    assert "shard_00000.safetensors" in json.loads((shard.parent / ".fetched.json").read_text())
    shard.write_bytes(b"damaged")  # a local copy that no longer matches the manifest's sha256
    remote.load()
    assert shard.read_bytes() == good


def test_an_interrupted_capture_keeps_the_url_and_resumes_from_staging(tmp_path, mem, spec, caplog):
    url, stage = "memory:///b/acts", str(tmp_path / "stage")
    ds = ActivationStoreDataset(path=url, local_cache=stage)
    capture_and_save(ds, CaptureJob(ModelHandle(spec), tiny_prompts(), layers=[1]))
    before = remote_files(mem, "/b/acts")

    changed = tiny_prompts(n_open=40, n_choice=0)  # a new job: arith is captured again
    job = dict(layers=[1], batch_tokens=64, shard_tokens=32)
    reference = tmp_path / "reference"
    CaptureJob(ModelHandle(spec), changed, **job).run(reference)

    handle = ModelHandle(spec)
    calls = {"n": 0}

    def interrupt(*_):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt

    hook = transformer_blocks(handle.load().model)[0].register_forward_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            capture_and_save(ds, CaptureJob(handle, changed, **job))
    finally:
        hook.remove()
    assert remote_files(mem, "/b/acts") == before  # the earlier complete capture is untouched

    with caplog.at_level("INFO"):
        capture_and_save(
            ActivationStoreDataset(path=url, local_cache=stage), CaptureJob(handle, changed, **job)
        )
    assert "resuming after" in caplog.text
    after = remote_files(mem, "/b/acts")
    assert {k: v for k, v in after.items() if k.startswith("arith/")} == local_files(reference)
    assert {k: v for k, v in after.items() if k.startswith("logic/")} == {
        k: v for k, v in before.items() if k.startswith("logic/")
    }


def test_a_failed_upload_is_finished_from_staging_without_capturing_again(tmp_path, mem, spec):
    url, stage = "memory:///b/acts", str(tmp_path / "stage")
    prompts = tiny_prompts()
    ds = ActivationStoreDataset(path=url, local_cache=stage)
    capture_and_save(ds, CaptureJob(ModelHandle(spec), prompts, layers=[1]))
    mem.rm("/b/acts/logic", recursive=True)  # as if its upload had never happened
    fresh = ModelHandle(spec)
    capture_and_save(
        ActivationStoreDataset(path=url, local_cache=stage), CaptureJob(fresh, prompts, layers=[1])
    )
    assert fresh._loaded is None
    assert mem.exists(f"/b/acts/logic/{HOOK1}/shard_00000.safetensors")


# -- publish: never a half-written folder at the URL ------------------------------------------
def interrupted_publish_is_completed_and_partial_upload_ignored(s, tmp_path):
    """Publishes through Storage `s` (an empty root) with interruptions at each step."""
    fs, root = s.fs, s.root

    def put(path, data):
        fs.makedirs(path.rpartition("/")[0], exist_ok=True)
        fs.pipe_file(path, data)

    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    for folder, files in (
        (v1, {"a": b"1", "b": b"1", "sub/c": b"1"}),
        (v2, {"a": b"2", "sub/c": b"2"}),
    ):
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    s.publish(v1, "item")
    assert remote_files(fs, root) == {"item/a": b"1", "item/b": b"1", "item/sub/c": b"1"}

    # Upload cut short before it was marked complete: the URL keeps v1.
    put(f"{root}/.item.new/a", b"2")
    s.recover()
    assert remote_files(fs, f"{root}/item") == {"a": b"1", "b": b"1", "sub/c": b"1"}

    # Complete upload, cut short while moving into place: the next access finishes it.
    put(f"{root}/.item.new/sub/c", b"2")
    put(f"{root}/.item.new.json", json.dumps({"files": ["a", "sub/c"]}).encode())
    fs.mv(f"{root}/.item.new/a", f"{root}/item/a")
    s.recover()
    assert remote_files(fs, root) == {"item/a": b"2", "item/sub/c": b"2"}

    s.publish(v1, "item")
    s.publish(v2, "item")
    assert remote_files(fs, root) == {"item/a": b"2", "item/sub/c": b"2"}
    s.publish(v1 / "a", "file")  # a single file
    assert remote_files(fs, root)["file"] == b"1"


@pytest.mark.parametrize("protocol", ["memory", "dir"])  # dir: real folders, as sftp or hdfs
def test_an_interrupted_publish_is_completed_and_a_partial_upload_ignored(tmp_path, mem, protocol):
    fs_args = (
        {"path": str(tmp_path / "remote"), "target_protocol": "file"} if protocol == "dir" else {}
    )
    s = Storage(f"{protocol}:///b/root", fs_args=fs_args, local_cache=str(tmp_path / "stage"))
    interrupted_publish_is_completed_and_partial_upload_ignored(s, tmp_path)


# -- SAEs -----------------------------------------------------------------------------------
CFG = TrainingConfig(**TINY, training_tokens=10 * 128)


def sae_round_trip_and_reuse(tmp_path, toy_set, caplog, url, stored, **ds_args):
    """Train into `url` and reuse from it; `stored()` as in capture_equals_a_local_capture..."""
    ds = SAEDataset(url, local_cache=str(tmp_path / "stage"), **ds_args)
    assert not ds.exists()
    train_and_save(ds, {HOOK: SAETrainingJob(toy_set, HOOK, CFG)})
    assert ds.exists()
    first = stored()
    assert set(first) == {
        "saes.json",
        f"{HOOK}/cfg.json",
        f"{HOOK}/sae_weights.safetensors",
        f"{HOOK}/training_summary.json",
    }  # checkpoints stay in staging
    assert (tmp_path / "stage" / HOOK / "checkpoints").is_dir()

    trained = SAEDataset(str(tmp_path / "stage")).load()[HOOK]
    loaded = SAEDataset(url, local_cache=str(tmp_path / "elsewhere"), **ds_args).load()[HOOK]
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert loaded.training_summary["finished"] and len(loaded.training_log["loss"]) == 10
    summaries = SAEDataset(url, local_cache=str(tmp_path / "x"), **ds_args).summaries()
    assert summaries[HOOK]["steps"] == 10

    again = SAEDataset(url, local_cache=str(tmp_path / "stage2"), **ds_args)
    with caplog.at_level(logging.INFO, logger="sae_reasoning"):
        train_and_save(again, {HOOK: SAETrainingJob(toy_set, HOOK, CFG)})
    assert f"reusing SAE {url}/{HOOK}" in caplog.text
    assert not (
        tmp_path / "stage2" / HOOK
    ).exists()  # decided from the URL: nothing trained or fetched
    assert stored() == first

    # A plain SAE is written as is; the index lists both.
    train_and_save(
        again, {HOOK: SAETrainingJob(toy_set, HOOK, CFG), "blocks.0.hook_resid_post": loaded}
    )
    assert set(SAEDataset(url, local_cache=str(tmp_path / "y"), **ds_args).load()) == {
        HOOK,
        "blocks.0.hook_resid_post",
    }


def test_sae_round_trip_and_reuse_through_a_url(tmp_path, mem, toy_set, caplog):
    sae_round_trip_and_reuse(
        tmp_path, toy_set, caplog, "memory:///b/sae/toy", lambda: remote_files(mem, "/b/sae/toy")
    )


def test_failed_training_keeps_the_sae_at_the_url(tmp_path, mem, toy_set):
    from tests.sae.test_train import NaNAt

    url = "memory:///b/sae/toy"
    train_and_save(
        SAEDataset(url, local_cache=str(tmp_path / "stage")),
        {HOOK: SAETrainingJob(toy_set, HOOK, CFG)},
    )
    before = remote_files(mem, "/b/sae/toy")
    changed = TrainingConfig(**{**TINY, "l1_coefficient": 2.0}, training_tokens=10 * 128)
    with pytest.raises(Exception):
        train_and_save(
            SAEDataset(url, local_cache=str(tmp_path / "stage")),
            {HOOK: SAETrainingJob(NaNAt(toy_set, 7), HOOK, changed)},
        )
    assert remote_files(mem, "/b/sae/toy") == before


# -- scores ---------------------------------------------------------------------------------
def scores_round_trip_and_fingerprint_reuse(spec, caplog, url, stored, **ds_args):
    """Score into `url` and reuse it; `stored()` is the table's bytes at the URL."""
    ds = ScoresDataset(filepath=url, **ds_args)
    assert not ds.exists()
    prompts = tiny_prompts()
    score_and_save(ds, BaselineJob(ModelHandle(spec), prompts, generate_tokens=3))
    first = ds.load()
    assert ds.exists() and len(first) == len(prompts) and "gold_logprob" in first.columns
    table = stored()

    fresh = ModelHandle(spec)
    with caplog.at_level("INFO"):
        score_and_save(
            ScoresDataset(filepath=url, **ds_args), BaselineJob(fresh, prompts, generate_tokens=3)
        )
    assert "reusing" in caplog.text and fresh._loaded is None
    assert stored() == table

    changed = prompts.copy()
    changed.loc[0, "target"] = " 99"
    score_and_save(ds, BaselineJob(ModelHandle(spec), changed, generate_tokens=3))
    assert ds.load().loc[0, "gold_logprob"] != first.loc[0, "gold_logprob"]
    assert stored() != table


def test_scores_round_trip_and_fingerprint_reuse_through_a_url(mem, spec, caplog):
    scores_round_trip_and_fingerprint_reuse(
        spec,
        caplog,
        "memory:///b/m/baseline_scores.parquet",
        lambda: mem.cat_file("/b/m/baseline_scores.parquet"),
    )


def test_a_failing_scores_job_keeps_the_table_at_the_url(tmp_path, mem):
    ds = ScoresDataset(filepath="memory:///b/scores.parquet")
    ds.save(pd.DataFrame({"a": [1, 2]}))
    broken = ModelHandle(
        ModelSpec("missing", str(tmp_path / "no_such_model"), converted_cache=None)
    )
    with pytest.raises(Exception, match="missing"):
        score_and_save(ds, BaselineJob(broken, tiny_prompts()))
    assert ds.load()["a"].tolist() == [1, 2]
    assert mem.ls("/b", detail=False) == ["/b/scores.parquet"]
