"""The atomic-write helper (sae_reasoning.atomic) and the publish scheme (sae_reasoning.publish)."""

import json
import os

import pytest

from sae_reasoning.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from sae_reasoning.publish import LocalSwap


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_text(path, "old")
    atomic_write_json(path, {"a": 1}, indent=1)
    assert json.loads(path.read_text()) == {"a": 1}
    atomic_write_bytes(path, b"x", unique=True)
    assert path.read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "f"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_folder_writer_replaces_the_folder_and_mode_is_set(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "stale").write_text("1")
    with atomic_path(tmp_path / "d") as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("2")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["new"]
    with atomic_path(tmp_path / "m", mode=0o644) as tmp:
        tmp.write_text("x")
    assert os.stat(tmp_path / "m").st_mode & 0o777 == 0o644


def test_local_swap_publishes_and_recovers_each_interruption(tmp_path):
    swap = LocalSwap(tmp_path, complete=lambda p: (p / "done").exists())

    def version(text):
        def write(staging):
            staging.mkdir()
            (staging / "data").write_text(text)
            (staging / "done").write_text("")

        return write

    swap.publish("x", version("1"))
    assert (tmp_path / "x" / "data").read_text() == "1"
    # cut after final -> .old: recover puts the complete staging copy in place
    version("2")(swap.staging("x"))
    os.replace(tmp_path / "x", swap.old("x"))
    swap.recover("x")
    assert (tmp_path / "x" / "data").read_text() == "2" and sorted(os.listdir(tmp_path)) == ["x"]
    # an incomplete staging copy is kept (abandon's default) and the final copy untouched
    swap.staging("x").mkdir()
    swap.recover("x")
    assert swap.staging("x").exists() and (tmp_path / "x" / "data").read_text() == "2"
    # a lone .old copy (cut after final -> .old, staging lost) is put back
    os.rmdir(swap.staging("x"))
    os.replace(tmp_path / "x", swap.old("x"))
    swap.recover("x")
    assert (tmp_path / "x" / "data").read_text() == "2" and sorted(os.listdir(tmp_path)) == ["x"]
