"""Waiting for another trial's artifact is not the waiting trial's cost: it is booked in
``wait_seconds``, apart from ``attack_seconds`` and ``defense_seconds``."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from bench.core import lockwait
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.trial import poisoning
from bench.trial.pipeline import run_trial

CPU = torch.device("cpu")

#: Holds the poisoned sets' and the backdoored model's locks, as a `none` trial of the same cell
#: would while it poisons the data and then trains the model, and releases each when told.
_HOLDER = """
import sys
from filelock import FileLock
locks = {"sets": FileLock(sys.argv[1]), "model": FileLock(sys.argv[2])}
for lock in locks.values():
    lock.acquire()
print("held", flush=True)
for line in sys.stdin:
    locks[line.strip()].release()
"""

#: How long the test keeps each lock after the trial has blocked on it.
HOLD_S = 1.5


class _BlockWatch:
    """Stands in for ``lockwait``'s clock: :func:`bench.core.lockwait.hold` reads it right
    before it blocks and right after, so every other reading announces a blocked trial."""

    def __init__(self) -> None:
        self.readings = 0
        self.blocked = threading.Semaphore(0)

    def perf_counter(self) -> float:
        self.readings += 1
        if self.readings % 2 == 1:
            self.blocked.release()
        return time.perf_counter()


def test_lock_wait_is_booked_apart_from_attack_and_defense_time(monkeypatch):
    """No wall-clock window: the test releases each lock only once the trial is blocked on it
    and HOLD_S later, so the trial waited at least 2 * HOLD_S however loaded the machine is;
    booked apart means the three times add up to no more than the trial's wall time."""
    spec = expand_grid(
        with_overrides(load_preset("smoke"), datasets=["cifar10"], defenses=["none"])
    )[0]
    spec = dataclasses.replace(spec, data={**spec.data, "train_size": 300, "test_size": 100})
    first = run_trial(spec, device=CPU)  # builds the poisoned sets and the backdoored model
    assert first["backdoored_model_cache"] == "built" and first["wait_seconds"] == 0.0

    root = Path(os.environ["BENCH_ARTIFACT_DIR"])
    [sets] = root.glob(f"{poisoning.KIND}/*.pt")
    [model] = root.glob("backdoored_model/*.pt")
    watch = _BlockWatch()
    monkeypatch.setattr(lockwait, "time", watch)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, f"{sets}.lock", f"{model}.lock"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    rows: list[dict] = []
    trial = threading.Thread(target=lambda: rows.append(run_trial(spec, device=CPU)))
    try:
        assert holder.stdout.readline().strip() == "held"
        trial.start()
        for name in ("sets", "model"):  # the trial loads the sets first, then the model
            assert watch.blocked.acquire(timeout=300), f"the trial never waited for {name}"
            time.sleep(HOLD_S)
            holder.stdin.write(name + "\n")
            holder.stdin.flush()
        trial.join(timeout=300)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    [row] = rows
    assert row["poisoned_sets_cache"] == row["backdoored_model_cache"] == "hit"
    assert row["wait_seconds"] >= 2 * HOLD_S
    # Booked apart: neither the attack's nor the defense's time holds the wait.
    booked = row["attack_seconds"] + row["defense_seconds"] + row["wait_seconds"]
    assert booked <= row["wall_seconds"] + 1e-3
    assert (row["ca"], row["asr"], row["ra"]) == (first["ca"], first["asr"], first["ra"])
