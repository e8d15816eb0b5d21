"""Trials in flight when their driver died.

A plugin is code with the user's rights: it can kill `bench run` itself, and then no row is
written. So the local executor leaves a marker for every attempt it starts
(``runs/<run>/inflight/<trial_id>.json``) and removes it once the attempt's row is written or
the driver stops it. A marker left behind means the driver died while that trial ran. The next
run counts them: a trial in flight at one driver death is run again, after every other trial
and alone (the death may have been an interruption, or an out-of-memory kill); one in flight at
more deaths than ``--retries`` + 1 becomes an ``error`` row saying so, and is not run again while
its markers stay (remove them, or change the defense, whose new revision is a new trial).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

INFLIGHT = "inflight"


def mark_started(run_dir: Path, trial_id: str) -> None:
    folder = run_dir / INFLIGHT
    folder.mkdir(exist_ok=True)
    marker = {"driver_pid": os.getpid(), "at": time.time()}
    (folder / f"{trial_id}.json").write_text(json.dumps(marker))


def mark_ended(run_dir: Path, trial_id: str) -> None:
    """The attempt ended with the driver alive (a row, or stopped on Ctrl-C)."""
    (run_dir / INFLIGHT / f"{trial_id}.json").unlink(missing_ok=True)


def driver_deaths(runs_root: Path) -> Counter[str]:
    """Per trial id: how many earlier drivers died while it ran (markers left behind)."""
    return Counter(p.stem for p in runs_root.glob(f"*/{INFLIGHT}/*.json"))


def forget(runs_root: Path, trial_id: str) -> None:
    """The trial finished with a row: its earlier markers no longer count against it."""
    for marker in runs_root.glob(f"*/{INFLIGHT}/{trial_id}.json"):
        marker.unlink(missing_ok=True)


def death_message(deaths: int, retries: int) -> str:
    return (
        f"DriverDied: bench run died {deaths} times while this trial ran (--retries {retries}: "
        f"at most {retries + 1} forgiven), so it is not run again: a defense that kills its "
        "own driver, or a machine that kills the driver for memory. Remove its markers "
        "(results/runs/*/inflight/<trial id>.json) to try it once more."
    )
