"""Fault injection: a real `kedro run --pipeline=phase4 --env=tiny` is interrupted (SIGKILL,
or SIGINT as Ctrl-C sends it) at chosen points, then run again to completion; the final
files must equal those of an uninterrupted run.

Kill points (STAGES, KILL_POINTS, SIGINT_POINTS) are deterministic in where they aim and
seeded in where they land: the test reads the run's log as it is written and, when a stage
starts (the capture progress bar, "training SAE for", "Running node: analyse_features"),
waits a seeded fraction of that stage's duration in the reference run (or until the stage's
"Completed node" line, if that comes first), then signals the whole process group. What the
interrupted run left (shards, staging folders, checkpoints, finished SAE, causal outputs)
is printed (-s) and is in every failure message. Runs use one torch thread
(OMP_NUM_THREADS=1): on a shared 2-core machine OpenMP spinning made one run 5x slower.

What is compared (see `compare`):
  byte for byte: every file under data/ except those below: activation shards and
    manifests, examples / few-shot / prompts parquet, SAE cfg.json, sae_weights.safetensors
    and saes.json, baseline scores, feature effects, circuit, feature contexts, feature
    ranking JSON, the reporting JSONs without timings (importance ranking, top contexts).
  as JSON with wall-clock measurements removed (keys in TIMING_KEYS: seconds and tokens/s,
    which differ between any two runs): both training_summary.json, sae_metrics.json,
    causal_summary.json, causal_test_results.json; likewise each model's report section
    (report_section.pkl: those results as the report node reads them, tables as data).
  as text without its "Generated <time>" line and with durations ("0.0962 s", the causal
    stage's cost line) masked: PHASE4_REPORT.md.
  existence only: *.png (matplotlib embeds its version and may embed metadata; the numbers
    behind every plot are compared in the JSON/parquet files above).
  names only: SAE training checkpoints (checkpoints/step_*.pt: resume state, which holds
    timings; the trained weights themselves are compared byte for byte).
  not compared: the run lock's files (.kedro_run.lock, .guard): lock machinery; after the
    rerun the holder record .kedro_run.lock.json must be gone. The resource ledger
    (09_tracking/), its summary resources.json and the report's "## Resources" section: they
    record how each run went (wall time, memory, tokens pushed), where a resumed run differs
    by design.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from tests.tiny_project import KEDRO, copy_project, kedro_env, make_tiny_env

pytestmark = pytest.mark.slow

# One tiny model; sizes that still give several shards per benchmark, several SAE
# checkpoints and every causal step, with a full run well under a minute on 2 cores.
MODELS = {"tiny_llama": ("llama", [1])}
OVERRIDES = {
    "capture": {"shard_tokens": 256, "batch_tokens": 512},
    "sae_training": {
        "min_steps": 200,
        "checkpoint_every": 20,
        "planted_dictionary": False,
        "spliced_eval": {"n_prompts": 4, "max_tokens": 64, "batch_size": 4, "seed": 0},
    },
    "causal": {
        "top_k": 2,
        "n_random_controls": 1,
        "n_random_sets": 1,
        "n_random_directions": 1,
        "n_null_features": 4,
        "n_boot": 100,
        "modes": ["zero"],
        "circuit_examples_per_benchmark": 4,
        "n_context_features": 2,
        "n_contexts": 2,
    },
}
RUN_ARGS = ("--pipeline=phase4", "--env=tiny")
RUN_TIMEOUT_S = 180  # one run, uninterrupted or rerun
STOP_TIMEOUT_S = 60  # from SIGINT to the run's exit
STALE_LOCK_WARNING = "taking over the run lock"

TIMING_KEYS = {
    "train_time_s",
    "tokens_per_s",
    "ablation_seconds",
    "null_seconds",
    "seconds_per_condition",
}
JSON_WITHOUT_TIMINGS = {
    "training_summary.json",
    "sae_metrics.json",
    "causal_summary.json",
    "causal_test_results.json",
}
LOCK_FILES = {".kedro_run.lock", ".kedro_run.lock.guard"}
LOCK_HOLDER = ".kedro_run.lock.json"
GENERATED_LINE = re.compile(r"^Generated .*$", re.MULTILINE)
RUN_RECORDS = ("09_tracking/", "08_reporting/resources.json")
RESOURCES_SECTION = re.compile(r"^## Resources$.*?(?=^## )", re.MULTILINE | re.DOTALL)
DURATION = re.compile(r"\b\d+(?:\.\d+)?(?:e-?\d+)? s\b")  # "0.0962 s": a wall-clock measurement


# -- running and interrupting ---------------------------------------------------------------


@dataclass
class Run:
    returncode: int | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    seconds: float = 0.0
    signalled_at: float | None = None
    stage_ended_first: bool = False  # the stage ended before the delay ran out

    @property
    def log(self) -> str:
        return "".join(line for _, line in self.lines)

    def tail(self, n: int = 6000) -> str:
        return self.log[-n:]

    def first(self, pattern: str) -> float | None:
        return next((t for t, line in self.lines if re.search(pattern, line)), None)


def _default_sigint() -> None:
    """A job started in the background of a non-interactive shell (CI may be one) inherits
    SIGINT ignored, and Python then never raises KeyboardInterrupt: give the run the
    disposition a terminal's Ctrl-C meets."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_kedro(
    project: Path,
    *,
    trigger: str | None = None,
    delay: float = 0.0,
    until: str | None = None,
    sig: int = signal.SIGKILL,
) -> Run:
    """Run phase4 in its own process group; with `trigger`, send `sig` to the group `delay`
    seconds after a log line matches it, or as soon as a later line matches `until` (the
    stage ended early: the signal still lands right after it). Returns once the run exited."""
    # One intra-op thread: tiny tensors, and OpenMP threads spinning on a shared 2-core machine
    # slow a run many times over. Unbuffered output: the log is read as it is written.
    env = {**kedro_env(), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run, fired, ended = Run(), threading.Event(), threading.Event()
    start = time.monotonic()
    proc = subprocess.Popen(
        [KEDRO, "run", *RUN_ARGS],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
        preexec_fn=_default_sigint,
    )

    def read() -> None:
        for line in proc.stdout:
            run.lines.append((time.monotonic() - start, line))
            if trigger is not None and not fired.is_set() and re.search(trigger, line):
                fired.set()
            elif fired.is_set() and until is not None and re.search(until, line):
                ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if trigger is not None:
            deadline = start + RUN_TIMEOUT_S
            while not fired.wait(0.05):
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
            if fired.is_set():
                run.stage_ended_first = ended.wait(delay)
                run.signalled_at = time.monotonic() - start
                if proc.poll() is None:
                    os.killpg(proc.pid, sig)
        wait = STOP_TIMEOUT_S if run.signalled_at is not None else RUN_TIMEOUT_S
        try:
            proc.wait(
                timeout=wait
                if run.signalled_at is not None
                else max(1.0, start + wait - time.monotonic())
            )
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            reader.join(timeout=10)
            raise AssertionError(
                f"the run did not exit within {wait} s"
                f"{' of the signal' if run.signalled_at is not None else ''}:\n" + run.tail()
            ) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    reader.join(timeout=10)
    run.returncode, run.seconds = proc.returncode, time.monotonic() - start
    return run


def interval(run: Run, begin: str, end: str) -> float | None:
    """Seconds between the first log lines matching `begin` and then `end`, as read."""
    t0 = run.first(begin)
    t1 = next(
        (t for t, line in run.lines if t0 is not None and t >= t0 and re.search(end, line)), None
    )
    return None if t1 is None else t1 - t0


def state(data: Path) -> str:
    """What an interrupted run left: per activation folder (shards, complete), per SAE
    folder (checkpoints, finished), causal and report outputs."""
    parts = []
    for manifest in sorted(data.glob("04_feature/activations/*/*/*/manifest.json")):
        m = json.loads(manifest.read_text())
        parts.append(
            f"{manifest.parent.parent.name}: {len(m['shards'])} shards"
            f"{' complete' if m.get('complete') else ' partial'}"
        )
    for sae in sorted(data.glob("06_models/sae/*/*/")):
        ckpts = sorted(p.name for p in sae.glob("checkpoints/step_*.pt"))
        parts.append(
            f"SAE {sae.name}: checkpoints {ckpts}, "
            f"{'finished' if (sae / 'sae_weights.safetensors').exists() else 'unfinished'}"
        )
    parts.append(
        "feature_effects "
        + ("written" if list(data.glob("07_model_output/*/feature_effects.parquet")) else "absent")
    )
    parts.append(
        "report " + ("written" if (data / "08_reporting/PHASE4_REPORT.md").exists() else "absent")
    )
    return "; ".join(parts)


# -- comparing ------------------------------------------------------------------------------


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _section_without_timings(path: Path):
    """A report_section.pkl as comparable data: its tables as JSON, its dicts untimed."""
    section = pickle.loads(path.read_bytes())
    return {
        k: v.to_json() if isinstance(v, pd.DataFrame) else _without_timings(v)
        for k, v in section.items()
    }


def _report_text(path: Path) -> str:
    text = RESOURCES_SECTION.sub("", GENERATED_LINE.sub("", path.read_text()))
    return DURATION.sub("<t> s", text)


def _files(data: Path) -> dict[str, Path]:
    files = {str(p.relative_to(data)): p for p in sorted(data.rglob("*")) if p.is_file()}
    return {name: p for name, p in files.items() if not name.startswith(RUN_RECORDS)}


def compare(reference: Path, data: Path) -> list[str]:
    """Differences between two data/ folders, per the rules in the module docstring."""
    ref, got = _files(reference), _files(data)
    problems = []
    for missing in sorted(ref.keys() - got.keys() - LOCK_FILES):
        problems.append(f"missing: {missing}")
    for extra in sorted(got.keys() - ref.keys() - LOCK_FILES):
        problems.append(f"extra: {extra}")
    for name in sorted(ref.keys() & got.keys()):
        a, b = ref[name], got[name]
        base = Path(name).name
        if base in LOCK_FILES or base.endswith(".png") or "/checkpoints/" in f"/{name}":
            continue
        if base in JSON_WITHOUT_TIMINGS:
            same = _without_timings(json.loads(a.read_text())) == _without_timings(
                json.loads(b.read_text())
            )
        elif base == "report_section.pkl":
            same = _section_without_timings(a) == _section_without_timings(b)
        elif base == "PHASE4_REPORT.md":
            same = _report_text(a) == _report_text(b)
        else:
            same = a.read_bytes() == b.read_bytes()
        if not same:
            problems.append(f"differs: {name}")
    return problems


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_model_dirs) -> Path:
    root = copy_project(tmp_path_factory.mktemp("fault_template"))
    make_tiny_env(root, tiny_model_dirs, models=MODELS, overrides=OVERRIDES)
    return root


def fresh_project(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, ignore=shutil.ignore_patterns("data", "logs", "__pycache__"))
    return dest


@pytest.fixture(scope="module")
def reference(template, tmp_path_factory):
    """An uninterrupted run: its data/ folder and its node durations."""
    project = fresh_project(template, tmp_path_factory.mktemp("fault_reference") / "p")
    run = run_kedro(project)
    assert run.returncode == 0, run.tail()
    durations = {stage: interval(run, *marks) for stage, marks in STAGES.items()}
    assert None not in durations.values(), (durations, run.tail())
    print(
        f"\nreference run: {run.seconds:.1f} s; stages: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in durations.items())
    )
    return project / "data", durations


# -- the tests ------------------------------------------------------------------------------

# Where a signal is sent: (log line that arms it, log line that ends the stage). The delay
# after the first is a seeded fraction of the time between the two in the reference run.
STAGES = {
    # the shard writer at work: 19 shards of 256 tokens over 3 benchmarks
    "capture": (r"capture tiny_llama:\s+0%", r"Completed node: tiny_llama\.capture_activations"),
    # 200 steps, a checkpoint every 20
    "train_sae": (r"training SAE for blocks", r"Completed node: tiny_llama\.train_sae"),
    # attribution, ablations, controls, circuit search: outputs are saved at the end
    "analyse_features": (
        r"Running node: analyse_features",
        r"Completed node: tiny_llama\.analyse_features",
    ),
}
KILL_POINTS = [("capture", 0), ("capture", 1), ("train_sae", 0), ("analyse_features", 0)]
SIGINT_POINTS = [("capture", 2), ("train_sae", 2)]


def interrupt_and_resume(
    template, reference, tmp_path, stage: str, seed: int, sig: int
) -> tuple[Run, Run, str]:
    ref_data, durations = reference
    delay = random.Random(f"{stage}-{seed}").uniform(0.0, durations[stage])
    project = fresh_project(template, tmp_path / "p")
    killed = run_kedro(
        project, trigger=STAGES[stage][0], until=STAGES[stage][1], delay=delay, sig=sig
    )
    left = state(project / "data")
    landed = (
        "right after it ended (sooner than in the reference run)"
        if killed.stage_ended_first
        else f"{killed.signalled_at - killed.first(STAGES[stage][0]):.3f} s into it"
        if killed.signalled_at is not None
        else "never"
    )
    where = (
        f"{signal.Signals(sig).name} aimed {delay:.3f} s into {stage} (which took "
        f"{durations[stage]:.3f} s in the reference run), landed {landed}; the run exited "
        f"{killed.seconds - (killed.signalled_at or 0):.2f} s after the signal, leaving: {left}"
    )
    print(f"\n{where}")
    assert killed.signalled_at is not None, f"{stage} never started:\n{killed.tail()}"
    assert killed.returncode != 0, f"the run completed before the signal: {where}\n{killed.tail()}"
    assert "report absent" in left, where
    holder_left = (project / "data" / LOCK_HOLDER).exists()
    rerun = run_kedro(project)
    assert rerun.returncode == 0, f"{where}\nrerun failed:\n{rerun.tail()}"
    print(f"rerun: {rerun.seconds:.1f} s")
    problems = compare(ref_data, project / "data")
    assert not problems, (
        f"{where}\nafter the rerun, data/ differs from an uninterrupted run:\n"
        + "\n".join(problems)
    )
    assert not (project / "data" / LOCK_HOLDER).exists(), (
        "the completed rerun left its lock holder record"
    )
    return killed, rerun, where, holder_left


@pytest.mark.parametrize(("stage", "seed"), KILL_POINTS, ids=[f"{n}-{s}" for n, s in KILL_POINTS])
def test_sigkill_then_rerun_matches_uninterrupted_run(template, reference, tmp_path, stage, seed):
    killed, rerun, where, _ = interrupt_and_resume(
        template, reference, tmp_path, stage, seed, signal.SIGKILL
    )
    assert killed.returncode == -signal.SIGKILL, where
    # The killed run could not release the run lock: the rerun takes it over, saying so.
    assert STALE_LOCK_WARNING in rerun.log, (
        f"{where}\nno stale-lock warning in the rerun:\n{rerun.tail()}"
    )


@pytest.mark.parametrize(
    ("stage", "seed"), SIGINT_POINTS, ids=[f"{n}-{s}" for n, s in SIGINT_POINTS]
)
def test_sigint_stops_the_run_and_rerun_matches(template, reference, tmp_path, stage, seed):
    # run_kedro fails the test when the run is still alive STOP_TIMEOUT_S after Ctrl-C.
    killed, rerun, where, holder_left = interrupt_and_resume(
        template, reference, tmp_path, stage, seed, signal.SIGINT
    )
    assert killed.returncode not in (0, -signal.SIGKILL), where
    # Ctrl-C releases the run lock (Kedro's on_pipeline_error does not see KeyboardInterrupt;
    # the hook releases at exit): no holder record is left and the rerun takes over nothing.
    assert not holder_left, f"{where}\nCtrl-C left the run lock's holder record"
    assert STALE_LOCK_WARNING not in rerun.log, (
        f"{where}\nthe rerun found a stale lock:\n{rerun.tail()}"
    )
