"""Which hardware a grid runs on, chosen without flags: a CUDA GPU when the machine has one.

A preset made for CPUs (``gpus_per_trial = 0``, like ``quick``) runs on this machine's GPUs when
torch sees any and the user did not ask otherwise (``--gpus-per-trial``, ``--address``): several
trials share each GPU (:data:`TRIALS_PER_GPU`), at bf16 under ``--precision auto``. The first
lines of a run say which hardware was chosen and how to choose the other.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

from bench.core import precision
from bench.errors import BenchError
from bench.spec import Resources

log = logging.getLogger("bench")

#: Trials sharing one GPU when a CPU preset runs on a GPU machine (small models leave most of a
#: GPU idle; four at once keep it busy without running out of memory).
TRIALS_PER_GPU = 4


def local_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as Ray counts them, not the
    machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def fit_cpus(resources: Resources, *, cpus_flag: float | None, address: str | None) -> Resources:
    """A preset's CPUs per trial, capped at this machine's cores on a local run: the paper
    preset asks 4 per trial and still starts on a 2-core laptop (each trial gets both cores).
    An explicit ``--cpus-per-trial`` beyond the cores is refused at once, before Ray starts."""
    cores = local_cpus()
    wanted = resources.cpus_per_trial
    if address is not None or not math.isfinite(wanted) or wanted <= cores:
        return resources  # a cluster has its own CPUs; preflight refuses non-finite values
    if cpus_flag is not None:
        raise BenchError(
            f"--cpus-per-trial {cpus_flag:g} exceeds this machine's {cores} CPUs; "
            f"use at most {cores}, or --address a Ray cluster"
        )
    return dataclasses.replace(resources, cpus_per_trial=float(cores))


def choose(
    resources: Resources,
    *,
    gpus_flag: float | None,
    address: str | None,
    requested: str,
    cpus_flag: float | None = None,
) -> Resources:
    """``resources`` with GPUs where the machine has them and nothing said otherwise, CPU trials
    fitted to the machine's cores (:func:`fit_cpus`); logs the choice. ``requested`` is the grid's
    precision ("auto", "fp32", "bf16")."""
    import torch

    chosen = resources
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and gpus_flag is None and address is None and resources.gpus_per_trial == 0:
        chosen = dataclasses.replace(resources, gpus_per_trial=1 / TRIALS_PER_GPU)
        log.info(
            "hardware: %d CUDA GPU(s) (%s), %d trials per GPU; --gpus-per-trial 0 keeps the CPU",
            gpus,
            torch.cuda.get_device_name(0),
            TRIALS_PER_GPU,
        )
    elif address is not None:
        log.info("hardware: the Ray cluster at %s", address)
    elif chosen.gpus_per_trial > 0:
        log.info(
            "hardware: CUDA GPU(s), %g GPU and %g CPU(s) per trial",
            chosen.gpus_per_trial,
            chosen.cpus_per_trial,
        )
    else:
        fitted = fit_cpus(chosen, cpus_flag=cpus_flag, address=address)
        log.info(
            "hardware: CPU (%d cores; no CUDA GPU%s), %g CPU(s) per trial, %s",
            local_cpus(),
            " asked for" if gpus else "",
            fitted.cpus_per_trial,
            _precision_note(requested, "cpu"),
        )
        if fitted != chosen:
            log.info(
                "the preset asks %g CPUs per trial and this machine has %d: each trial gets %g "
                "(--cpus-per-trial sets it)",
                chosen.cpus_per_trial,
                local_cpus(),
                fitted.cpus_per_trial,
            )
        chosen = fitted
    return chosen


def _precision_note(requested: str, device: str) -> str:
    used = precision.resolve(requested, device)
    if requested != "auto":
        return f"precision {used}"
    if precision.forced():
        return f"precision {used} (auto: ${precision.AUTO_ENV})"
    flags = ", ".join(precision.cpu_bf16_flags()) or "no native bf16 units"
    return f"precision {used} (auto: {flags})"
