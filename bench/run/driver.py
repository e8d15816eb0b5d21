"""Fan a grid of trials out over Ray Tune workers (or, without Ray, the local executor:
:mod:`bench.run.local_executor`) and record every finished trial.

Every trial attempt runs in a child process of its worker (:mod:`bench.run.isolation`), so a
defense that blocks, crashes or is killed still ends in a ``timeout`` or ``error`` row.

Each trial writes its own row to the results store the moment it finishes (under a file lock,
atomically), so killing the driver loses at most the trials in flight, and a rerun of the same
command skips every trial that already has an ``ok`` row.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.core import settings
from bench.errors import BenchError, Terminated
from bench.run import inflight
from bench.run.recording import (
    PENDING_DIR,
    format_duration,
    merge_pending,
    pending_rows,
    skipped_row,
    spec_row,
    trial_label,
)
from bench.run.signals import sigterm_as_interrupt, sigterm_received
from bench.schema import ERROR, OK, SKIPPED, Col
from bench.spec import Resources, TrialSpec
from bench.store import ResultsStore

log = logging.getLogger("bench.runner")


@dataclass(frozen=True)
class GridSummary:
    total: int
    skipped: int
    ok: int
    errors: int
    run_dir: Path | None
    seconds: float
    not_run: int = 0  # trials with no row at all (the run was interrupted)
    pending: int = 0  # finished trials whose rows wait in runs/<run>/pending (table unwritable)


def _new_skipped_rows(
    store: ResultsStore, skipped: list[tuple[TrialSpec, str]]
) -> list[dict[str, Any]]:
    """The skipped rows the table does not hold yet with the same reason: a rerun of a finished
    grid writes nothing (the committed record and its journal stay as they are)."""
    table = store.read()
    have = set(zip(table[Col.trial_id], table[Col.status], table[Col.error], strict=True))
    rows = [skipped_row(spec, reason) for spec, reason in skipped]
    return [r for r in rows if (r[Col.trial_id], SKIPPED, r[Col.error]) not in have]


def run_order(specs: list[TrialSpec]) -> list[TrialSpec]:
    """Defense-major order, `none` first: the `none` trials build the backdoored models that
    later defenses reuse, and each defense runs after the ones before it in the grid, so a stage
    two defenses share (ABL's isolation, NAB's detection) is usually ready when the second needs
    it. Cell-major order would run both on one cell at once, the second waiting on the first's
    artifact lock with its CPU idle."""
    rank = {d: i for i, d in enumerate(dict.fromkeys(s.defense for s in specs))}
    return sorted(specs, key=lambda s: (s.defense != "none", rank[s.defense]))


DRIVER_LOCK = ".bench-run.lock"


@contextmanager
def driver_lock(results_dir: Path) -> Iterator[None]:
    """One ``bench run`` per results directory at a time: a second one would compute the same
    trials again. The lock is an flock on ``.bench-run.lock`` (released by the kernel if the
    driver dies, so it is never stale); the file names the holder for the refusal message."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / DRIVER_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BenchError(
            f"another bench run ({holder}) is running on {results_dir}; wait for it to finish "
            "(rerunning then skips what it completed) or use another --results-dir"
        ) from None
    started = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}".encode())
    try:
        yield
    finally:
        os.close(fd)  # releases the flock


def new_run_dir(results_dir: Path, run_name: str | None = None) -> Path:
    """A fresh ``runs/<name>`` directory: the timestamp, with a suffix if it is taken."""
    runs = results_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    base = run_name or datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        candidate = runs / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise BenchError(f"cannot create a run directory under {runs}: {base}-1..999 all exist")


def run_grid(
    specs: list[TrialSpec],
    resources: Resources,
    *,
    results_dir: Path | None = None,
    address: str | None = None,
    run_name: str | None = None,
    skipped: list[tuple[TrialSpec, str]] | None = None,
    executor: str = "auto",
) -> GridSummary:
    """Run every spec without an ``ok`` row yet, through Ray Tune or the local executor
    (:func:`choose_executor`); rows land in the store. ``skipped`` cells (left out of the grid,
    with the reason) are recorded as ``skipped`` rows, so the leaderboard can show why they are
    N/A. One driver per results directory."""
    results_dir = Path(results_dir or settings.results_dir())
    executor = choose_executor(executor, address)
    with driver_lock(results_dir), sigterm_as_interrupt():
        return _run_grid_locked(
            specs, resources, results_dir, address, run_name, skipped or [], executor
        )


EXECUTORS = ("auto", "ray", "local")


def _after_driver_deaths(
    todo: list[TrialSpec], store: ResultsStore, runs_root: Path, retries: int
) -> tuple[list[TrialSpec], list[TrialSpec], list[TrialSpec]]:
    """(trials to run as usual, trials in flight at an earlier driver's death, to run last,
    trials in flight at more deaths than ``retries`` + 1, which got an ``error`` row instead)."""
    deaths = inflight.driver_deaths(runs_root)
    failed = [s for s in todo if deaths[s.trial_id] > retries + 1]
    if failed:
        store.upsert(
            [
                spec_row(
                    s,
                    **{
                        Col.status: ERROR,
                        Col.error: inflight.death_message(deaths[s.trial_id], retries),
                        Col.attempts: deaths[s.trial_id],
                    },
                )
                for s in failed
            ]
        )
        for s in failed:
            log.error("%s: %s", trial_label(s), inflight.death_message(deaths[s.trial_id], retries))
    rest = [s for s in todo if s not in failed]
    suspects = [s for s in rest if deaths[s.trial_id]]
    for s in suspects:
        log.warning(
            "%s was running when an earlier bench run died: it runs last, alone", trial_label(s)
        )
    return [s for s in rest if not deaths[s.trial_id]], suspects, failed


def choose_executor(requested: str, address: str | None = None) -> str:
    """The executor that runs the grid, "ray" or "local": ``auto`` is Ray where it can be
    imported, else the local executor (said in a warning); ``local`` never imports ray."""
    if requested not in EXECUTORS:
        raise BenchError(f"--executor must be one of {', '.join(EXECUTORS)}, got {requested!r}")
    if requested == "local":
        if address:
            raise BenchError("--address joins a Ray cluster: use it with --executor ray")
        return "local"
    try:
        import ray  # noqa: F401
    except Exception as exc:  # not installed, or broken
        reason = f"{type(exc).__name__}: {exc}"
        if requested == "ray" or address:
            raise BenchError(
                f"ray cannot be imported ({reason}); install it (pip install 'ray[tune]'), or "
                "run on this machine with --executor local"
            ) from None
        log.warning(
            "ray cannot be imported (%s): trials run on this machine with the local executor "
            "(--executor local)",
            reason,
        )
        return "local"
    return "ray"


def _run_grid_locked(
    specs: list[TrialSpec],
    resources: Resources,
    results_dir: Path,
    address: str | None,
    run_name: str | None,
    skipped: list[tuple[TrialSpec, str]],
    executor: str,
) -> GridSummary:
    start = time.time()
    store = ResultsStore(results_dir / "results.parquet")
    try:
        merge_pending(store, results_dir / "runs")  # rows an earlier run could not write
        if skipped:
            store.upsert(_new_skipped_rows(store, skipped))
    except OSError as exc:
        raise BenchError(
            f"cannot write the results table {store.path} ({exc}); fix the directory's "
            "permissions, then rerun: the rows waiting under runs/*/pending are merged then"
        ) from exc
    done_ids = store.ok_ids()
    todo = run_order([s for s in specs if s.trial_id not in done_ids])
    todo, suspects, failed = _after_driver_deaths(
        todo, store, results_dir / "runs", resources.retries
    )
    skipped = len(specs) - len(todo) - len(suspects) - len(failed)
    todo = todo + suspects  # run last (and alone, on the local executor): see inflight
    if not todo and failed:
        return GridSummary(len(specs), skipped, 0, len(failed), None, 0.0)
    if not todo:
        log.info("all %d trials already have ok rows in %s; nothing to run", len(specs), store.path)
        return GridSummary(len(specs), skipped, 0, 0, None, 0.0)

    run_dir = new_run_dir(results_dir, run_name)
    file_handler = logging.FileHandler(run_dir / "bench.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("bench").addHandler(file_handler)
    log.info("%d trials to run (%d already done); logs in %s", len(todo), skipped, run_dir)
    interrupted: KeyboardInterrupt | None = None
    try:
        try:
            if executor == "local":
                from bench.run.local_executor import run_local
                from bench.run.ray_reaper import reaping

                # What a trial started (even in a session of its own) ends with the grid.
                with reaping():
                    run_local(todo, store, run_dir, start, resources, alone=len(suspects))
            else:
                from bench.run.ray_executor import run_ray

                run_ray(todo, store, run_dir, start, resources, address)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the summary first, then the exit
            interrupted = exc
        try:
            merge_pending(store, results_dir / "runs")
        except Exception as exc:  # still unwritable: the rows stay pending
            log.warning("pending rows stay in %s: %s", run_dir / PENDING_DIR, exc)
    finally:
        logging.getLogger("bench").removeHandler(file_handler)
        file_handler.close()
    todo_ids = {s.trial_id for s in todo}
    rows = store.read()
    errors_before = len(failed)  # error rows written before the run (driver deaths)
    ran = rows[rows[Col.trial_id].isin(todo_ids)]
    waiting = {p.stem for p in pending_rows(results_dir / "runs")} & (
        todo_ids - set(ran[Col.trial_id])
    )
    ok = int((ran[Col.status] == OK).sum())
    errors = len(ran) - ok + errors_before
    not_run = len(todo) - len(ran) - len(waiting)
    seconds = time.time() - start
    log.info(
        "grid %s in %s: %d ok, %d failed, %d not run, %d skipped (already done)%s",
        "interrupted" if interrupted else "finished",
        format_duration(seconds),
        ok,
        errors,
        not_run,
        skipped,
        f", {len(waiting)} rows pending (table unwritable)" if waiting else "",
    )
    if interrupted is not None:
        raise Terminated() if sigterm_received() else interrupted
    return GridSummary(
        len(todo) + len(failed) + skipped,
        skipped,
        ok,
        errors,
        run_dir,
        seconds,
        not_run,
        len(waiting),
    )
