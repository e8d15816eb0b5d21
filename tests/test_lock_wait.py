"""Waiting for another trial's artifact is not the waiting trial's cost: it is booked in
``wait_seconds``, apart from ``attack_seconds`` and ``defense_seconds``."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.trial.pipeline import run_trial

CPU = torch.device("cpu")

#: Holds the poisoned sets' lock for 2 s and the backdoored model's for 4 s, as a `none` trial
#: of the same cell would while it poisons the data and then trains the model.
_HOLDER = """
import sys, time
from filelock import FileLock
sets, model = FileLock(sys.argv[1]), FileLock(sys.argv[2])
sets.acquire(); model.acquire()
print("held", flush=True)
time.sleep(2.0); sets.release()
time.sleep(2.0); model.release()
"""


def test_lock_wait_is_booked_apart_from_attack_and_defense_time():
    spec = expand_grid(
        with_overrides(load_preset("smoke"), datasets=["cifar10"], defenses=["none"])
    )[0]
    spec = dataclasses.replace(spec, data={**spec.data, "train_size": 300, "test_size": 100})
    first = run_trial(spec, device=CPU)  # builds the poisoned sets and the backdoored model
    assert first["backdoored_model_cache"] == "built" and first["wait_seconds"] == 0.0

    root = Path(os.environ["BENCH_ARTIFACT_DIR"])
    [sets] = root.glob("poisoned_sets/*.pt")
    [model] = root.glob("backdoored_model/*.pt")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, f"{sets}.lock", f"{model}.lock"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        row = run_trial(spec, device=CPU)
    finally:
        holder.wait(timeout=30)
    assert row["poisoned_sets_cache"] == row["backdoored_model_cache"] == "hit"
    # Blocked from the start until the model's lock went at 4 s (less the trial's set-up).
    assert 3.0 <= row["wait_seconds"] <= 4.5
    # Loading the cached sets and model takes a fraction of a second once the locks are free.
    assert row["attack_seconds"] < 1.0
    assert row["defense_seconds"] < 1.0
    assert row["wall_seconds"] >= row["wait_seconds"]
    assert (row["ca"], row["asr"], row["ra"]) == (first["ca"], first["asr"], first["ra"])
