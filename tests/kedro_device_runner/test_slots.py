"""Slot resolution: what `slots=` means, from Python and from `--runner-params`."""

import pytest
from kedro.framework.cli.project import _split_params

from kedro_device_runner import DeviceSlotRunner, resolve_slots
from kedro_device_runner.slots import cpu_cores, visible_gpus

no_gpu = pytest.mark.skipif(bool(visible_gpus()), reason="expects a machine without GPUs")


@pytest.mark.parametrize(
    "spec", ["cpu,cpu", "cpu;cpu", "cpu + cpu", ["cpu", "cpu"], ("cpu", "CPU")]
)
def test_explicit_cpu_slots(spec):
    slots = resolve_slots(spec, n_groups=5)
    assert [s.name for s in slots] == ["cpu:0", "cpu:1"]
    assert all(s.kind == "cpu" and s.cuda_visible_devices == "" for s in slots)
    assert all(s.threads == max(1, cpu_cores() // 2) for s in slots)


@no_gpu
def test_auto_without_gpus_gives_one_cpu_slot_per_group_up_to_the_cores():
    assert len(resolve_slots("auto", n_groups=1)) == 1
    assert len(resolve_slots(None, n_groups=100)) == cpu_cores()
    assert [s.kind for s in resolve_slots(3, n_groups=1)] == ["cpu"] * 3
    assert len(resolve_slots("2", n_groups=1)) == 2


@no_gpu
def test_asking_for_a_gpu_that_is_not_there_fails_clearly():
    with pytest.raises(ValueError, match=r"cuda:0 asked for, 0 GPU\(s\) visible"):
        resolve_slots("cuda:0;cuda:1", n_groups=2)


def test_slot_environment_hides_gpus_from_cpu_workers_and_sets_threads():
    (slot,) = resolve_slots("cpu", n_groups=1, threads_per_slot=3)
    env = slot.env()
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["OMP_NUM_THREADS"] == "3"
    assert env["KEDRO_DEVICE_SLOT"] == "cpu:0"


@pytest.mark.parametrize("spec", ["tpu:0", "cuda:x", True, "0"])
def test_bad_specs_are_rejected(spec):
    with pytest.raises(ValueError, match="slot"):
        resolve_slots(spec, n_groups=1)


def test_cli_runner_params_reach_the_constructor():
    # What `kedro run --runner-params=slots=cpu;cpu,threads_per_slot=1,log_dir=x` passes.
    kwargs = _split_params(None, None, "slots=cpu;cpu,threads_per_slot=1,log_dir=x")
    runner = DeviceSlotRunner(**kwargs, is_async=False)
    assert runner._slots_spec == "cpu;cpu"
    assert runner._threads_per_slot == 1
    assert [s.name for s in resolve_slots(runner._slots_spec, 2)] == ["cpu:0", "cpu:1"]
