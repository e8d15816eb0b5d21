"""What both executors (Ray Tune's and the local one) share: how a trial is named, its log
file, how a finished trial's row is recorded (kept as a pending file when the table cannot be
written), the progress lines, and how many trials run at once."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from bench.schema import OK, SKIPPED, Col, complete_row, upgrade
from bench.spec import Resources, TrialSpec
from bench.store import ResultsStore, plain_row, store_record, typed_row

log = logging.getLogger("bench.runner")


def trial_label(spec: TrialSpec) -> str:
    """A trial as the progress lines name it."""
    return f"{spec.dataset}/{spec.attack}/{spec.defense}/r={spec.ratio}/s={spec.seed}"


def trial_log_handler(path: Path) -> logging.FileHandler:
    """A handler appending to a trial's log file in its one format. The executor's parent and
    the trial's own process both append to the file (O_APPEND), each line in one write."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    return handler


def trial_logger(path: Path, name: str) -> logging.Logger:
    """A logger writing only to the trial's own log file (not to the run's console)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"bench.trial.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers = [trial_log_handler(path)]
    return logger


def close_logger(logger: logging.Logger) -> None:
    """Release a trial's log file (workers are reused for the next trial)."""
    for handler in logger.handlers:
        handler.close()
    logger.handlers = []


PENDING_DIR = "pending"


def record_row(row: dict[str, Any], table: Path, run_dir: Path) -> None:
    """Store a finished trial's row. If the table cannot be written, the row is kept in
    ``<run_dir>/pending/<trial_id>.json`` (never lost) and merged into the table by the next
    successful write or the next run."""
    store = ResultsStore(table)
    try:
        store.upsert([row])
    except Exception as exc:  # OSError, a lock timeout, an unreadable table moved aside...
        pending = run_dir / PENDING_DIR / f"{row[Col.trial_id]}.json"
        pending.parent.mkdir(parents=True, exist_ok=True)
        tmp = pending.with_name(pending.name + ".tmp")
        tmp.write_text(json.dumps(plain_row(row), default=str))  # missing values as null
        os.replace(tmp, pending)
        log.warning(
            "cannot write %s (%s: %s); the row of trial %s is kept in %s",
            table,
            type(exc).__name__,
            exc,
            row[Col.trial_id],
            pending,
        )
        return
    merge_pending(store, run_dir.parent)


def pending_rows(runs_root: Path) -> list[Path]:
    """Rows of finished trials that are waiting to be written to the table."""
    return sorted(runs_root.glob(f"*/{PENDING_DIR}/*.json")) if runs_root.is_dir() else []


REJECTED_SUFFIX = ".rejected"


def merge_pending(store: ResultsStore, runs_root: Path) -> int:
    """Write waiting rows into the table (then delete them); how many were merged. A row that
    cannot be merged (damaged, or not in the schema's types) is renamed ``*.json.rejected``
    with a warning: it never blocks the directory."""
    files = pending_rows(runs_root)
    if not files:
        return 0
    rows, merged = [], []
    for path in files:
        try:
            row = typed_row(json.loads(path.read_text()))
        except FileNotFoundError:  # merged by a concurrent writer
            continue
        except (OSError, ValueError) as exc:  # half-written or damaged
            _reject(path, exc)
            continue
        try:
            upgrade(pd.DataFrame([store_record(row)]))  # the checks upsert makes, row by row
        except Exception as exc:
            _reject(path, exc)
            continue
        rows.append(row)
        merged.append(path)
    store.upsert(rows)
    for path in merged:
        path.unlink(missing_ok=True)
    if rows:
        log.info("merged %d pending row(s) into %s", len(rows), store.path)
    return len(rows)


def _reject(path: Path, exc: Exception) -> None:
    aside = path.with_name(path.name + REJECTED_SUFFIX)
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    log.warning(
        "pending row %s cannot be merged (%s: %s); set aside as %s (the table is not blocked)",
        path, type(exc).__name__, exc, aside,
    )  # fmt: skip


def format_duration(seconds: float) -> str:
    """``12m05s`` or ``1h02m05s``."""
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Logs 'done/total, ETA' as trials finish (both executors)."""

    def __init__(self, total: int, start: float, concurrency: int):
        self.total, self.start, self.concurrency = total, start, max(1, concurrency)
        self.done = 0
        self.failed = 0

    def trial_done(self, label: str, status: str, ca: float = math.nan, asr: float = math.nan):
        self.done += 1
        self.failed += 0 if status == OK else 1
        elapsed = time.time() - self.start
        remaining = self.total - self.done
        waves_left = math.ceil(remaining / self.concurrency)
        per_wave = elapsed / max(1, math.ceil(self.done / self.concurrency))
        eta = format_duration(waves_left * per_wave) if remaining else "0m00s"
        outcome = f"CA {ca:.3f} ASR {asr:.3f}" if status == OK else status.upper()
        log.info(
            "[%d/%d trials done, %d failed] %s: %s | elapsed %s, ETA %s",
            self.done,
            self.total,
            self.failed,
            label,
            outcome,
            format_duration(elapsed),
            eta,
        )


def concurrency(resources: Resources, cpus: float, gpus: float) -> int:
    """How many trials run at once on ``cpus`` CPUs and ``gpus`` GPUs."""
    cores = max(1, int(cpus))
    # Never more trials at once than cores: each runs at least one thread.
    slots = min(cores, max(1, int(cores / resources.cpus_per_trial + 1e-9)))
    if resources.gpus_per_trial > 0:  # fractions pack trials onto a GPU (0.25: four)
        slots = min(slots, int(gpus / resources.gpus_per_trial + 1e-9))
    if resources.max_concurrent_trials:
        slots = min(slots, resources.max_concurrent_trials)
    return max(1, slots)


def skipped_row(spec: TrialSpec, reason: str) -> dict[str, Any]:
    """The row of a cell left out of the grid: its spec, status ``skipped`` and the reason."""

    return spec_row(spec, **{Col.status: SKIPPED, Col.error: reason})


def spec_row(spec: TrialSpec, **columns: Any) -> dict[str, Any]:
    """A row the harness writes for a trial that produced no row of its own: its spec's
    columns and ``columns``."""
    from bench.trial.provenance import spec_columns

    return complete_row({**spec_columns(spec), **columns})
