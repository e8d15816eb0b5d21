"""Hardware chosen without flags: GPUs where the machine has them, said in the first lines."""

from __future__ import annotations

import logging

import pytest

from bench.run import devices
from bench.spec import Resources


@pytest.fixture
def gpus(monkeypatch):
    def have(n: int) -> None:
        monkeypatch.setattr("torch.cuda.is_available", lambda: n > 0)
        monkeypatch.setattr("torch.cuda.device_count", lambda: n)
        monkeypatch.setattr("torch.cuda.get_device_name", lambda i=0: "Test GPU")

    return have


def test_a_cpu_preset_runs_on_the_gpus_of_a_gpu_machine(gpus, caplog):
    gpus(2)
    with caplog.at_level(logging.INFO, logger="bench"):
        chosen = devices.choose(Resources(), gpus_flag=None, address=None, requested="auto")
    assert chosen.gpus_per_trial == pytest.approx(1 / devices.TRIALS_PER_GPU)
    assert "2 CUDA GPU(s) (Test GPU)" in caplog.text and "--gpus-per-trial 0" in caplog.text


def test_without_a_gpu_or_with_an_explicit_choice_nothing_changes(gpus, caplog):
    gpus(0)
    with caplog.at_level(logging.INFO, logger="bench"):
        assert devices.choose(Resources(), gpus_flag=None, address=None, requested="fp32") == (
            Resources()
        )
    assert "hardware: CPU" in caplog.text and "precision fp32" in caplog.text
    gpus(1)
    cpu = Resources(gpus_per_trial=0.0)
    assert devices.choose(cpu, gpus_flag=0.0, address=None, requested="auto") == cpu
    assert devices.choose(cpu, gpus_flag=None, address="h:6379", requested="auto") == cpu


def test_a_preset_asking_more_cpus_than_the_machine_has_still_starts(gpus, monkeypatch, caplog):
    """Before: `bench run --preset paper --gpus-per-trial 0` on a 2-core machine started Ray and
    then stopped with '--cpus-per-trial 4 exceeds the cluster's 2 CPUs' (a flag never given)."""
    from bench.errors import BenchError

    gpus(0)
    monkeypatch.setattr(devices, "local_cpus", lambda: 2)
    paper = Resources(cpus_per_trial=4)
    with caplog.at_level(logging.INFO, logger="bench"):
        fitted = devices.choose(paper, gpus_flag=0.0, address=None, requested="auto")
    assert fitted.cpus_per_trial == 2
    assert "2 CPU(s) per trial" in caplog.text and "asks 4 CPUs per trial" in caplog.text
    # A cluster has its own CPUs; an explicit flag beyond the cores is refused before Ray starts.
    assert devices.choose(paper, gpus_flag=0.0, address="h:6379", requested="auto") == paper
    with pytest.raises(BenchError, match="--cpus-per-trial 4 exceeds this machine's 2 CPUs"):
        devices.choose(paper, gpus_flag=0.0, cpus_flag=4, address=None, requested="auto")


def test_bench_auto_precision_pins_what_auto_means(monkeypatch):
    """The suite runs whole at either precision (BENCH_AUTO_PRECISION=fp32|bf16 make test), and
    a record run spanning machines pins its precision; an explicit one still wins."""
    from bench.core import precision

    for pinned in ("fp32", "bf16"):
        monkeypatch.setenv("BENCH_AUTO_PRECISION", pinned)
        assert precision.resolve("auto", "cpu") == pinned
        assert precision.current("cpu") == pinned  # outside a trial too
        assert precision.resolve("fp32", "cpu") == "fp32"
    monkeypatch.setenv("BENCH_AUTO_PRECISION", "fp16")
    with pytest.raises(ValueError, match="BENCH_AUTO_PRECISION must be 'fp32' or 'bf16'"):
        precision.resolve("auto", "cpu")
