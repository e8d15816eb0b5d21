"""One trial: poison the data, run the defense, evaluate CA / ASR / RA, and build the result row.

This is what a trial's child process executes (:mod:`bench.run.isolation`, under a Ray worker or the
local executor). The steps live in their own modules: :mod:`bench.trial.cell`
(data, attack, poisoned sets), :mod:`bench.trial.defend` (the defense and its time),
:mod:`bench.trial.evaluate` (metrics) and :mod:`bench.trial.provenance` (where and how it ran).
:func:`run_trial_safely` never raises: a failing trial becomes a row with status ``error`` and
its traceback, so one bad trial never sinks the grid.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from bench.core import precision
from bench.core.limits import TrialTimeout, time_limit
from bench.core.seeding import seed_everything
from bench.grid import registry
from bench.schema import ERROR, OK, TIMEOUT, Col, complete_row
from bench.spec import TrialSpec
from bench.trial.cell import poison_cell
from bench.trial.defend import run_defense
from bench.trial.evaluate import evaluate
from bench.trial.provenance import peak_memory_mb, provenance, spec_columns
from bench.trial.resolved import ResolvedTrial

log = logging.getLogger("bench.trial")


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def run_trial(
    spec: TrialSpec, *, device: torch.device, report: Callable[[str], None] = log.info
) -> dict[str, Any]:
    """Execute ``spec`` and return its metrics (the caller adds bookkeeping columns), at the
    precision the spec asks for on ``device``."""
    with precision.use_precision(precision.resolve(spec.precision, device)):
        return _run_trial(spec, device=device, report=report)


def _run_trial(
    spec: TrialSpec, *, device: torch.device, report: Callable[[str], None]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    seed_everything(spec.seed, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trial = ResolvedTrial.resolve(spec, device, report)
    data, attack, defense = trial.data, trial.attack, trial.defense
    cell = poison_cell(trial)
    run = run_defense(trial, cell)
    scores = evaluate(cell, run, spec.target, device, trial.who)
    backdoored_seconds = run.loader.train_seconds
    row = {
        **scores,
        Col.n_train: len(data.train_y),
        Col.n_test: len(data.test_y),
        Col.n_poison: cell.n_poison,
        Col.n_cross: cell.n_cross,
        Col.attack_mode: "training-controlled" if attack.controls_training else "static",
        Col.attack_artifacts: cell.artifact_log(),
        Col.defense_artifacts: run.stage_artifacts(),
        Col.n_clean_subset: run.n_clean_subset,
        Col.peak_memory_mb: peak_memory_mb(device),
        Col.data_source: data.source,
        Col.attack_package: trial.attack_entry.package,
        Col.attack_version: trial.attack_entry.version,
        Col.defense_package: trial.defense_entry.package,
        Col.defense_version: trial.defense_entry.version,
        Col.defense_reconstructed: bool(defense.reconstructed),
        Col.backdoored_model_cache: run.loader.cache_status,
        Col.poisoned_sets_cache: cell.sets.cache,
        Col.backdoored_train_seconds: backdoored_seconds,
        Col.attack_seconds: cell.seconds,
        Col.defense_seconds: run.seconds,
        Col.wait_seconds: cell.wait_seconds + run.wait_seconds,
        Col.train_seconds: run.seconds
        + (0.0 if math.isnan(backdoored_seconds) else backdoored_seconds),
        Col.stage_seconds: run.stage_seconds(),
        Col.defense_metrics: run.defense_metrics(),
        Col.wall_seconds: time.perf_counter() - t0,
    }
    ca, asr, ra = scores[Col.ca], scores[Col.asr], scores[Col.ra]
    report(f"done: CA {ca:.4f} ASR {asr:.4f} RA {ra:.4f}")
    return row


def component_columns(spec: TrialSpec) -> dict[str, Any]:
    """The packages and versions providing the trial's attack and defense, known from their
    entry points before anything runs, so a failed trial's row names them too."""
    columns: dict[str, Any] = {}
    for kind in registry.GROUPS:  # the attack and the defense
        try:
            entry = registry.get_entry(kind, getattr(spec, kind))
        except Exception:  # unknown, claimed twice...: the trial itself says so
            continue
        columns[getattr(Col, f"{kind}_package")] = entry.package
        columns[getattr(Col, f"{kind}_version")] = entry.version
        if kind == Col.defense:  # the registry's kind, named as the column
            try:
                reference_name = getattr(entry.load(), "reference_name", None)
            except Exception:  # a plugin that fails to import: the trial itself says so
                reference_name = None
            columns[Col.defense_reference_name] = reference_name or ""
    return columns


def run_trial_safely(
    spec: TrialSpec,
    *,
    gpus: float = 0.0,
    threads: int | None = None,
    report: Callable[[str], None] = log.info,
    time_limit_s: float = 0.0,
) -> dict[str, Any]:
    """Run a trial and return its result row, complete per :mod:`bench.schema` (typed defaults
    for what a failed trial did not measure): ``status`` ``ok``, ``error`` or ``timeout`` (past
    ``time_limit_s`` seconds; 0 means no limit)."""
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    device = pick_device(gpus)
    started = time.time()
    t0 = time.perf_counter()
    try:
        with time_limit(time_limit_s):
            row = {
                **component_columns(spec),
                Col.status: OK,
                **run_trial(spec, device=device, report=report),
            }
    except TrialTimeout as exc:
        report(f"trial stopped: {exc}")
        row = {
            **component_columns(spec),
            Col.status: TIMEOUT,
            Col.error: f"{exc}\n{traceback.format_exc()}",
            Col.wall_seconds: time.perf_counter() - t0,
        }
    except Exception as exc:  # one failing trial must never sink the grid
        report(f"trial failed: {type(exc).__name__}: {exc}")
        row = {
            **component_columns(spec),
            Col.status: ERROR,
            Col.error: traceback.format_exc(),
            Col.wall_seconds: time.perf_counter() - t0,
        }
    used = precision.resolve(spec.precision, device)
    return complete_row(
        {**spec_columns(spec), **row, **provenance(device, started), Col.precision_used: used}
    )
