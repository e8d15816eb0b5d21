"""A driver killed outright leaves no process behind (case 9 of issue 22)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hostile_support import (
    REAPED_DRIVER,
    _gone,
    _smoke_driver,
    bounded,
)


def test_case9_a_killed_driver_leaves_no_processes_behind(tmp_path):
    """What the driver started dies with it, even a process that lost the driver's token."""
    driver = subprocess.Popen(
        [sys.executable, "-c", REAPED_DRIVER],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        with bounded(120):  # a hang guard
            helper, grandchild = map(int, driver.stdout.readline().split())
            time.sleep(1.2)  # the watchdog notes them (twice a second)
            driver.kill()
            driver.wait()
            start = time.monotonic()
            while not (_gone(helper) and _gone(grandchild)):
                # Before: 60-70 s; the bound leaves a loaded machine room below that.
                assert time.monotonic() - start < 30, "the driver's processes outlived it"
                time.sleep(0.1)
    finally:
        for pid in (helper, grandchild):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_case9_ray_processes_die_with_a_driver_killed_during_start_up(tmp_path):
    """Before: after a driver SIGKILL during start-up, Ray's dashboard and runtime-env agents
    lingered 60-70 s (they report the raylet's death to the dead GCS with a fixed 60 s
    timeout)."""
    import ray  # noqa: F401  (ray ships psutil and puts it on sys.path)

    psutil = pytest.importorskip("psutil")
    results = tmp_path / "results"
    driver = _smoke_driver(results, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def session() -> list[str]:
        names = []
        for proc in psutil.process_iter(["name"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(proc.pid) == driver.pid:
                    names.append(proc.info["name"])
        return names

    try:
        with bounded(120):
            while not any("Agent" in n for n in session()):  # the agents are up: start-up
                assert driver.poll() is None
                time.sleep(0.1)
            driver.kill()
            driver.wait()
            start = time.monotonic()
            while session():
                assert time.monotonic() - start < 30, f"still running: {session()}"  # was 60+
                time.sleep(0.2)
    finally:
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(proc.pid) == driver.pid:
                    proc.kill()
