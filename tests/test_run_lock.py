"""Issue 14 item 2: one writing `kedro run` per project data folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import click
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node
from kedro_datasets.json import JSONDataset

from sae_reasoning.hooks import RunLockHook
from sae_reasoning.run_lock import RunLock, RunLockError
from tests.pipelines.validate.project import REPO, kedro_run, make_project

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from kedro.io import DataCatalog
    from kedro.pipeline import Pipeline, node
    from kedro_datasets.json import JSONDataset
    from sae_reasoning.hooks import RunLockHook

    def make():
        return {}

    root = Path(sys.argv[1])
    hook = RunLockHook()
    pipe = Pipeline([node(make, None, "out", name="make")])
    catalog = DataCatalog({"out": JSONDataset(filepath=str(root / "data" / "out.json"))})
    params = {"project_path": str(root), "run_id": "holder-run", "pipeline_names": ["phase4"]}
    hook.before_pipeline_run(params, pipe, catalog)
    print("held", flush=True)
    sys.stdin.read()
    hook.after_pipeline_run(params, None, pipe, catalog)
""")


def make():
    return {}


def _writing_run(root):
    pipe = Pipeline([node(make, None, "out", name="make")])
    catalog = DataCatalog({"out": JSONDataset(filepath=str(root / "data" / "out.json"))})
    return {"project_path": str(root), "run_id": "r"}, pipe, catalog


@pytest.fixture
def holder(tmp_path):
    """A second process that holds the run lock of `tmp_path` through the hook."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_run_is_refused_naming_the_holder(tmp_path, holder):
    hook = RunLockHook()
    with pytest.raises(click.ClickException) as info:
        hook.before_pipeline_run(*_writing_run(tmp_path))
    msg = info.value.message
    assert f"another Kedro run is writing to this project's data folder {tmp_path / 'data'}" in msg
    assert f"pid {holder.pid} on host {socket.gethostname()}, started " in msg
    assert "command: -c " in msg  # sys.argv of the holder (`kedro run ...` in real runs)
    # once the holder ends, the lock is free again (released by its after_pipeline_run)
    holder.stdin.close()
    holder.wait(timeout=60)
    hook.before_pipeline_run(*_writing_run(tmp_path))
    hook.after_pipeline_run(*_writing_run(tmp_path)[:1], None, *_writing_run(tmp_path)[1:])


@pytest.mark.slow
def test_real_kedro_run_is_refused_while_another_holds_the_lock(tmp_path, tiny_model_dirs):
    root = make_project(tmp_path / "proj", tiny_model_dirs["llama"])
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        result = kedro_run(root, "--pipeline=validate")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "another Kedro run is writing to this project's data folder" in out
    assert f"pid {proc.pid} on host {socket.gethostname()}" in out
    assert not (root / "data/08_reporting/validation.json").exists()  # stopped before any node
    # and the lock is free after a (successful) real run
    result = kedro_run(root, "--pipeline=validate")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (root / "data" / ".kedro_run.lock.json").exists()
    RunLock(root / "data").acquire().release()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    dead = _dead_pid()
    (data / ".kedro_run.lock").write_text("")
    (data / ".kedro_run.lock.json").write_text(
        json.dumps(
            {
                "pid": dead,
                "host": socket.gethostname(),
                "started": "2026-01-01T00:00:00+00:00",
                "command": "kedro run --pipeline=phase4",
            }
        )
    )
    with caplog.at_level("WARNING", logger="sae_reasoning.run_lock"):
        lock = RunLock(data).acquire()
    assert lock.held
    assert f"taking over the run lock {data / '.kedro_run.lock'}" in caplog.text
    assert f"pid {dead} on host" in caplog.text and "kedro run --pipeline=phase4" in caplog.text
    assert json.loads((data / ".kedro_run.lock.json").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (data / ".kedro_run.lock.json").exists()


def test_lock_still_held_but_recorded_holder_dead_is_taken_over(tmp_path, caplog):
    # The OS lock is held (by a process that inherited it, or a marker-file lock on a
    # filesystem without locks) while the recorded holder is gone: taken over.
    data = tmp_path / "data"
    data.mkdir()
    keeper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from filelock import FileLock; "
            f"l = FileLock({str(data / '.kedro_run.lock')!r}); l.acquire(); "
            "print('held', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert keeper.stdout.readline().strip() == "held"
        (data / ".kedro_run.lock.json").write_text(
            json.dumps(
                {
                    "pid": _dead_pid(),
                    "host": socket.gethostname(),
                    "started": "x",
                    "command": "kedro run",
                }
            )
        )
        with caplog.at_level("WARNING", logger="sae_reasoning.run_lock"):
            lock = RunLock(data).acquire()
        assert lock.held and "is no longer running" in caplog.text
        lock.release()
    finally:
        keeper.stdin.close()
        keeper.wait(timeout=60)


def test_holder_on_another_host_is_not_taken_over(tmp_path, holder):
    record = tmp_path / "data" / ".kedro_run.lock.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "host": "elsewhere"}))
    with pytest.raises(RunLockError, match="runs on another host \\(elsewhere\\).*delete"):
        RunLock(tmp_path / "data").acquire()


def test_lock_is_released_after_a_run_and_after_a_failed_run(tmp_path):
    hook = RunLockHook()
    params, pipe, catalog = _writing_run(tmp_path)
    hook.before_pipeline_run(params, pipe, catalog)
    with pytest.raises(RunLockError):  # held: a second lock on the folder is refused
        RunLock(tmp_path / "data").acquire()
    hook.after_pipeline_run(params, None, pipe, catalog)
    RunLock(tmp_path / "data").acquire().release()

    hook.before_pipeline_run(params, pipe, catalog)
    hook.on_pipeline_error(RuntimeError("node failed"), params, pipe, catalog)
    RunLock(tmp_path / "data").acquire().release()
    assert not (tmp_path / "data" / ".kedro_run.lock.json").exists()


def test_run_that_writes_nothing_takes_no_lock(tmp_path, holder):
    pipe = Pipeline([node(make, None, "out", name="make")])
    catalog = DataCatalog({"out": MemoryDataset()})
    RunLockHook().before_pipeline_run({"project_path": str(tmp_path)}, pipe, catalog)
