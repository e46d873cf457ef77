"""The project's datasets at s3:// URLs, through s3fs, against a real S3 API server: moto's,
on 127.0.0.1 in this process. The scenarios are test_storage.py's memory:// ones; what the
bucket holds is read back with boto3, so s3fs's listing cache cannot hide a stale state."""

import pytest
from kedro.io import DatasetError

from sae_reasoning.activations.capture import CaptureJob
from sae_reasoning.baseline import BaselineJob
from sae_reasoning.datasets.activations import ActivationStoreDataset
from sae_reasoning.datasets.sae import SAEDataset
from sae_reasoning.datasets.scores import ScoresDataset
from sae_reasoning.datasets.storage import Storage
from sae_reasoning.models import ModelHandle
from tests.datasets.test_storage import (
    capture_equals_a_local_capture_and_is_reused,
    interrupted_publish_is_completed_and_partial_upload_ignored,
    sae_round_trip_and_reuse,
    scores_round_trip_and_fingerprint_reuse,
)
from tests.prompts_fixture import tiny_prompts
from tests.s3_server import BUCKET, s3_files
from tests.store_helpers import capture_and_save, score_and_save


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


# -- scenarios shared with memory:// --------------------------------------------------------
def test_capture_into_s3_equals_a_local_capture_and_is_reused(tmp_path, s3, ds_args, spec):
    capture_equals_a_local_capture_and_is_reused(
        tmp_path, spec, f"s3://{BUCKET}/acts/tiny", lambda: s3_files(s3[1], "acts/tiny"), **ds_args
    )


def test_sae_round_trip_and_reuse_through_s3(tmp_path, s3, ds_args, toy_set, caplog):
    sae_round_trip_and_reuse(
        tmp_path,
        toy_set,
        caplog,
        f"s3://{BUCKET}/sae/toy",
        lambda: s3_files(s3[1], "sae/toy"),
        **ds_args,
    )


def test_scores_round_trip_and_fingerprint_reuse_through_s3(s3, ds_args, spec, caplog):
    scores_round_trip_and_fingerprint_reuse(
        spec,
        caplog,
        f"s3://{BUCKET}/m/baseline_scores.parquet",
        lambda: s3_files(s3[1], "m")["baseline_scores.parquet"],
        **ds_args,
    )


def test_an_interrupted_publish_to_s3_is_completed_and_a_failed_upload_keeps_the_old_copy(
    tmp_path, s3, ds_args, monkeypatch
):
    s = Storage(f"s3://{BUCKET}/publish", local_cache=str(tmp_path / "stage"), **ds_args)
    interrupted_publish_is_completed_and_partial_upload_ignored(s, tmp_path)
    before = s3_files(s3[1], "publish")
    assert before["item/a"] == b"2" and before["file"] == b"1"

    # A real upload that fails part way (the second file's PUT): the URL keeps the old copy.
    v3 = tmp_path / "v3"
    for name in ("a", "sub/c", "sub/d"):
        (v3 / name).parent.mkdir(parents=True, exist_ok=True)
        (v3 / name).write_bytes(b"3")
    put_file, calls = type(s.fs)._put_file, []

    async def failing_put_file(self, lpath, rpath, *args, **kwargs):
        calls.append(rpath)
        if len(calls) == 2:
            raise ConnectionError("connection reset during upload")
        return await put_file(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(type(s.fs), "_put_file", failing_put_file)
    with pytest.raises(DatasetError, match=rf"s3://{BUCKET}/publish/item failed .*ConnectionError"):
        s.publish(v3, "item")
    after = s3_files(s3[1], "publish")
    assert {k: v for k, v in after.items() if not k.startswith(".")} == before
    assert len(calls) == 3  # it failed among the item's own files, not before them
    monkeypatch.undo()

    # The next access ignores the unmarked partial upload; the next publish replaces it.
    Storage(f"s3://{BUCKET}/publish", **ds_args).recover()
    assert {k: v for k, v in s3_files(s3[1], "publish").items() if not k.startswith(".")} == before
    s.publish(v3, "item")
    assert s3_files(s3[1], "publish") == {
        "item/a": b"3",
        "item/sub/c": b"3",
        "item/sub/d": b"3",
        "file": b"1",
    }


# -- errors named with the URL, before any model work -----------------------------------------
def test_wrong_credentials_fail_before_the_model_loads(tmp_path, s3, ds_args, spec, monkeypatch):
    from moto import settings

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys from now
    url = f"s3://{BUCKET}/acts/denied"
    bad = {**ds_args, "credentials": {"key": "AKIAWRONGWRONGWRONG0", "secret": "wrong"}}
    handle = ModelHandle(spec)
    ds = ActivationStoreDataset(path=url, local_cache=str(tmp_path / "stage"), **bad)
    with pytest.raises(DatasetError, match=rf"activation store {url} is not writable .*Access Key"):
        capture_and_save(ds, CaptureJob(handle, tiny_prompts(), layers=[1]))
    assert handle._loaded is None
    with pytest.raises(DatasetError, match=rf"scores table s3://{BUCKET}/m2 is not writable"):
        score_and_save(
            ScoresDataset(filepath=f"s3://{BUCKET}/m2/scores.parquet", **bad),
            BaselineJob(handle, tiny_prompts()),
        )
    assert handle._loaded is None


def test_a_missing_bucket_fails_before_the_model_loads_and_is_not_created(
    tmp_path, s3, ds_args, spec, toy_set
):
    url = "s3://no-such-bucket/acts"
    handle = ModelHandle(spec)
    ds = ActivationStoreDataset(path=url, local_cache=str(tmp_path / "stage"), **ds_args)
    with pytest.raises(DatasetError, match=rf"activation store {url} is not writable"):
        capture_and_save(ds, CaptureJob(handle, tiny_prompts(), layers=[1]))
    with pytest.raises(DatasetError, match=r"SAE folder s3://no-such-bucket/sae is not writable"):
        SAEDataset("s3://no-such-bucket/sae", local_cache=str(tmp_path / "sae"), **ds_args).save(
            {"blocks.3.hook_resid_post": None}
        )
    assert handle._loaded is None
    # A mistyped bucket name must not quietly become a new bucket.
    assert [b["Name"] for b in s3[1].list_buckets()["Buckets"]] == [BUCKET]
    with pytest.raises(DatasetError, match=rf"no activation folders under {url}"):
        ds.load()
