"""Run a grid's trials on this machine without Ray (``bench run --executor local``, and the
fallback where ray cannot be imported, e.g. a GPU box with only PyTorch and pandas).

The driver starts each trial as an isolated child process (:mod:`bench.run.isolation`: time limits
that hold, a row whatever kills it), as many at once as the resources allow: CPUs per trial, and
GPUs per trial where fractions pack several trials onto one GPU (0.25: four). It keeps Ray's
contract: the same results store and pending rows, retries, per-trial logs under the run
directory, progress lines, and the run order it is given. Nothing here imports ray.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path

from bench.errors import BenchError
from bench.run import inflight
from bench.run.devices import local_cpus
from bench.run.isolation import IsolatedTrial
from bench.run.recording import (
    Progress,
    close_logger,
    concurrency,
    record_row,
    trial_label,
    trial_logger,
)
from bench.schema import Col
from bench.spec import Resources, TrialSpec
from bench.store import ResultsStore

log = logging.getLogger("bench.runner")

_EPS = 1e-9


def visible_gpus() -> list[str]:
    """The CUDA devices trials may use, as ``CUDA_VISIBLE_DEVICES`` names them."""
    import torch

    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in named.split(",") if d.strip()] if named else []
    return ids[:count] if ids else [str(i) for i in range(count)]


class GpuPool:
    """Which GPUs a trial runs on. A fraction of a GPU shares one with other trials (first fit);
    more than one takes whole idle GPUs."""

    def __init__(self, ids: list[str]):
        self.free = {gpu: 1.0 for gpu in ids}

    def acquire(self, amount: float) -> list[str] | None:
        """GPU ids for a trial asking ``amount`` GPUs, or None if they are taken now."""
        if amount <= 0:
            return []
        if amount <= 1:
            for gpu, free in self.free.items():
                if free + _EPS >= amount:
                    self.free[gpu] = free - amount
                    return [gpu]
            return None
        idle = [gpu for gpu, free in self.free.items() if free >= 1 - _EPS]
        needed = math.ceil(amount - _EPS)
        if len(idle) < needed:
            return None
        for gpu in idle[:needed]:
            self.free[gpu] = 0.0
        return idle[:needed]

    def release(self, ids: list[str], amount: float) -> None:
        share = amount if amount <= 1 else 1.0
        for gpu in ids:
            self.free[gpu] = min(1.0, self.free[gpu] + share)


def run_local(
    todo: list[TrialSpec],
    store: ResultsStore,
    run_dir: Path,
    start: float,
    resources: Resources,
    alone: int = 0,
) -> None:
    """Run ``todo`` in order, several at once, writing each row the moment its trial ends; the
    last ``alone`` trials (in flight when an earlier driver died) run one at a time, after all
    the others. Each attempt leaves a marker while it runs (:mod:`bench.run.inflight`). A Ctrl-C
    stops the running trials (their processes are killed) and returns: the summary counts what
    did not run."""
    cpus = local_cpus()
    gpus = visible_gpus() if resources.gpus_per_trial > 0 else []
    if resources.gpus_per_trial > len(gpus):
        raise BenchError(
            f"--gpus-per-trial {resources.gpus_per_trial:g} asked for, but this machine has "
            f"{len(gpus)} GPUs torch can use. Use --gpus-per-trial 0 for CPU trials."
        )
    if resources.cpus_per_trial > cpus:
        raise BenchError(
            f"--cpus-per-trial {resources.cpus_per_trial:g} exceeds this machine's {cpus} CPUs"
        )
    slots = concurrency(resources, cpus, len(gpus))
    per_trial = f"{resources.cpus_per_trial:g} CPU" + (
        f" + {resources.gpus_per_trial:g} GPU" if gpus else ""
    )
    log.info(
        "local executor: up to %d trials at once (%s each; %d CPUs%s here)",
        slots,
        per_trial,
        cpus,
        f", GPUs {','.join(gpus)}" if gpus else "",
    )
    pool = GpuPool(gpus)
    queue = deque(todo)
    running: dict[IsolatedTrial, list[str]] = {}
    progress = Progress(len(todo), start, slots)
    try:
        while queue or running:
            while queue and (
                len(running) < slots if len(queue) > alone else not running  # suspects: alone
            ):
                devices = pool.acquire(resources.gpus_per_trial)
                if devices is None:
                    break
                trial = _start(queue.popleft(), devices, run_dir, resources)
                running[trial] = devices
            limits = [t.seconds_left() for t in running]
            timeout = min((s for s in limits if s is not None), default=None)
            wait([w for t in running for w in t.waitables()], timeout)
            for trial in list(running):
                row = trial.poll()
                if row is None:
                    continue
                pool.release(running.pop(trial), resources.gpus_per_trial)
                _finish(trial, row, store, run_dir, progress)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the driver prints the summary and exits
        log.warning("interrupted: stopping %d running trial(s)", len(running))
        raise
    finally:
        for trial in running:
            trial.stop()
            inflight.mark_ended(run_dir, trial.spec.trial_id)  # stopped, not a driver death


def _start(
    spec: TrialSpec, devices: list[str], run_dir: Path, resources: Resources
) -> IsolatedTrial:
    log_path = (run_dir / "trials" / f"{spec.trial_id}.log").resolve()
    logger = trial_logger(log_path, spec.trial_id)
    logger.info("trial %s: %s", spec.trial_id, spec.canonical())
    options = {
        "gpus": resources.gpus_per_trial,
        "threads": max(1, int(resources.cpus_per_trial)),
        "time_limit_s": resources.trial_timeout_s,
        "output_path": log_path,
        "env": {"CUDA_VISIBLE_DEVICES": ",".join(devices)} if devices else {},
        "protect": [run_dir.parent.parent],  # the results directory: results/runs/<run>
    }
    trial = IsolatedTrial(spec, resources.retries, logger.info, options)
    inflight.mark_started(run_dir, spec.trial_id)
    trial.start()
    return trial


def _finish(
    trial: IsolatedTrial,
    row: dict,
    store: ResultsStore,
    run_dir: Path,
    progress: Progress,
) -> None:
    row[Col.run] = run_dir.name  # the results/runs/<run> that ran it
    record_row(row, store.path, run_dir)
    inflight.forget(run_dir.parent, trial.spec.trial_id)  # a row: earlier deaths are moot
    close_logger(logging.getLogger(f"bench.trial.{trial.spec.trial_id}"))
    progress.trial_done(trial_label(trial.spec), row[Col.status], row[Col.ca], row[Col.asr])
