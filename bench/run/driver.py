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
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.core import settings
from bench.errors import BenchError, Terminated
from bench.grid.config import Resources, TrialSpec
from bench.run.recording import (
    PENDING_DIR,
    Progress,
    close_logger,
    concurrency,
    format_duration,
    merge_pending,
    pending_rows,
    record_row,
    trial_label,
    trial_logger,
)
from bench.schema import ERROR, OK, SKIPPED, Col, complete_row
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


def _tune_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: run one trial (retrying failures) in child processes
    (:mod:`bench.run.isolation`: a timeout that holds, a row whatever kills it), store its row,
    report."""
    import ray
    from ray import tune

    from bench.run.isolation import run_isolated

    spec = TrialSpec.from_dict(json.loads(config[Col.spec]))
    log_path = Path(config["log_dir"]) / f"{spec.trial_id}.log"
    logger = trial_logger(log_path, spec.trial_id)
    logger.info("trial %s: %s", spec.trial_id, spec.canonical())
    # The worker's own harness messages (a row kept pending) go to the trial's log too.
    harness = logging.getLogger("bench")
    harness.setLevel(logging.INFO)
    harness.handlers = [*logger.handlers]
    try:
        row = run_isolated(
            spec,
            retries=config["retries"],
            report=logger.info,
            gpus=config["gpus"],
            threads=config["threads"],
            time_limit_s=config["timeout"],
            output_path=log_path,
        )
        row[Col.run] = Path(config["log_dir"]).parent.name  # the results/runs/<run> that ran it
        row[Col.ray_node] = ray.get_runtime_context().get_node_id()
        row[Col.node_ip] = ray.util.get_node_ip_address()
        record_row(row, Path(config["store"]), Path(config["log_dir"]).parent)
    finally:  # the worker is reused for the next trial: release this one's log file
        harness.handlers = []
        close_logger(logger)
    tune.report(
        {
            "ok": row[Col.status] == OK,
            Col.status: row[Col.status],
            "label": trial_label(spec),
            **{k: row[k] for k in (Col.ca, Col.asr, Col.ra, Col.wall_seconds)},
        }
    )


def _progress_callback(total: int, start: float, concurrency: int):
    from ray import tune

    progress = Progress(total, start, concurrency)

    class GridProgress(tune.Callback):
        """Prints 'done/total, ETA' as trials finish (Tune's own tables are switched off)."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            status = OK if result.get("ok") else str(result.get(Col.status, ERROR))
            progress.trial_done(result.get("label"), status, result[Col.ca], result[Col.asr])

        def on_trial_error(self, iteration, trials, trial, **info):
            # Only reached if the trainable itself crashed outside the isolated trial.
            progress.done += 1
            progress.failed += 1
            log.error(
                "[%d/%d trials done] a trial crashed outside the harness: %s",
                progress.done,
                total,
                trial,
            )

    return GridProgress()


#: Ray's switch for a node that serves this machine only (its default on macOS and Windows): the
#: node's IP becomes 127.0.0.1, and Ray binds the GCS, the raylet, every worker's and the
#: driver's gRPC server and the agents to the node IP, so all of them listen on loopback only.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: How many ~35 s attempts ray.init makes to reach a cluster's GCS (Ray's default: 20).
GCS_CONNECT_ATTEMPTS_ENV = "RAY_gcs_server_port_wait_time_s"


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Start a local Ray instance that listens on 127.0.0.1 only.

    The processes Ray starts read ``LOCAL_ONLY_ENV`` from the environment; this process read it
    when ``ray`` was first imported, so its constant is switched too (and both restored)."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with _environment(**{LOCAL_ONLY_ENV: "0"}):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _connect_ray(address: str | None, gpus_per_trial: float, cpus_per_trial: float) -> None:
    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith("BENCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    # Keep local workers in the driver's working directory, so relative data paths resolve the
    # same way there as here.
    env["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": env},
    }
    if address:
        # The user's cluster keeps Ray's defaults; only the connect is bounded (one attempt,
        # about 40 s) instead of twenty.
        attempts = os.environ.get(GCS_CONNECT_ATTEMPTS_ENV, "1")
        # A cluster started in Ray's local-only mode (LOCAL_ONLY_ENV=0, e.g. on loopback) is
        # joined in that mode, whether or not ray was imported before the variable was set.
        local_only = os.environ.get(LOCAL_ONLY_ENV) == "0"
        try:
            with (
                _environment(**{GCS_CONNECT_ATTEMPTS_ENV: attempts}),
                _loopback_only() if local_only else nullcontext(),
            ):
                ray.init(address=address, **kwargs)
        except Exception as exc:  # ConnectionError, TimeoutError, ValueError in various versions
            raise BenchError(
                f"cannot join the Ray cluster at --address {address}: {exc}. "
                "Start it with 'ray start --head' or check the address (host:port)."
            ) from exc
    else:
        # A local instance needs no outside peer: nothing of it may listen beyond loopback.
        env[LOCAL_ONLY_ENV] = "0"
        with _loopback_only():
            ray.init(address="local", **kwargs)
    if threading.current_thread() is threading.main_thread():  # ray.init installed its own
        signal.signal(signal.SIGTERM, _raise_terminated)
    resources = ray.cluster_resources()
    if gpus_per_trial > 0 and resources.get("GPU", 0) < gpus_per_trial:
        ray.shutdown()
        raise BenchError(
            f"--gpus-per-trial {gpus_per_trial} asked for, but the Ray cluster has "
            f"{resources.get('GPU', 0):g} GPUs. Use --gpus-per-trial 0 for CPU workers."
        )
    if resources.get("CPU", 0) < cpus_per_trial:
        ray.shutdown()
        raise BenchError(
            f"--cpus-per-trial {cpus_per_trial} exceeds the cluster's "
            f"{resources.get('CPU', 0):g} CPUs"
        )


def skipped_row(spec: TrialSpec, reason: str) -> dict[str, Any]:
    """The row of a cell left out of the grid: its spec, status ``skipped`` and the reason."""

    return spec_row(spec, **{Col.status: SKIPPED, Col.error: reason})


def spec_row(spec: TrialSpec, **columns: Any) -> dict[str, Any]:
    """A row the harness writes for a trial that produced no row of its own: its spec's
    columns and ``columns``."""
    from bench.trial.provenance import spec_columns

    return complete_row({**spec_columns(spec), **columns})


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


_SIGTERM_RECEIVED = threading.Event()


def _raise_terminated(signum: int, frame: Any) -> None:
    _SIGTERM_RECEIVED.set()  # Ray Tune may re-raise the interrupt as a plain KeyboardInterrupt
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM stops the run as Ctrl-C does (:class:`Terminated`), instead of
    killing the driver mid-write (or, once Ray is up, its C++ crash handler's stack dump and
    exit 134). Main thread only; the previous handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    _SIGTERM_RECEIVED.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


EXECUTORS = ("auto", "ray", "local")


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
    skipped = len(specs) - len(todo)
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
                    run_local(todo, store, run_dir, start, resources)
            else:
                from bench.run.ray_reaper import reaping

                # A local instance is stopped even if this driver is killed (bench.run.ray_reaper).
                with reaping() if not address else nullcontext():
                    _connect_ray(address, resources.gpus_per_trial, resources.cpus_per_trial)
                    try:
                        _fit_with_tune(todo, store, run_dir, start, resources)
                    finally:
                        import ray

                        ray.shutdown()
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
    ran = rows[rows[Col.trial_id].isin(todo_ids)]
    waiting = {p.stem for p in pending_rows(results_dir / "runs")} & (
        todo_ids - set(ran[Col.trial_id])
    )
    ok = int((ran[Col.status] == OK).sum())
    errors = len(ran) - ok
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
        raise Terminated() if _SIGTERM_RECEIVED.is_set() else interrupted
    return GridSummary(
        len(todo) + skipped, skipped, ok, errors, run_dir, seconds, not_run, len(waiting)
    )


def _concurrency(resources: Resources) -> int:
    import ray

    cluster = ray.cluster_resources()
    return concurrency(resources, cluster.get("CPU", 1), cluster.get("GPU", 0))


def _fit_with_tune(
    todo: list[TrialSpec], store: ResultsStore, run_dir: Path, start: float, resources: Resources
) -> None:
    # Tune's own tables would drown the one-line progress; the classic reporter at verbose=0
    # prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    concurrency = _concurrency(resources)
    trainable = tune.with_resources(
        _tune_trial, {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={
            Col.spec: tune.grid_search([s.canonical() for s in todo]),
            "store": str(store.path.resolve()),
            "log_dir": str((run_dir / "trials").resolve()),
            "gpus": resources.gpus_per_trial,
            "threads": max(1, int(resources.cpus_per_trial)),
            "timeout": resources.trial_timeout_s,
            "retries": resources.retries,
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            # Workers only watch their trial's child process: reusing them keeps their
            # forkserver (torch preloaded) and saves starting an actor per trial.
            reuse_actors=True,
            trial_name_creator=lambda t: _trial_id_of(t.config),
            trial_dirname_creator=lambda t: _trial_id_of(t.config),
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(run_dir.resolve()),
            callbacks=[_progress_callback(len(todo), start, concurrency)],
            verbose=0,
            # A worker that dies (killed, out of memory, a plugin killing its own parent) is
            # retried as the trial's child is.
            failure_config=tune.FailureConfig(max_failures=resources.retries),
        ),
    )
    grid = tuner.fit()
    _record_dead_workers(grid, store, run_dir, resources.retries)


def _record_dead_workers(grid: Any, store: ResultsStore, run_dir: Path, retries: int) -> int:
    """A trial whose Ray worker died wrote no row and reported nothing; Tune holds its error.
    Each becomes an ``error`` row saying how (never 'not run'); how many."""
    have = set(store.read()[Col.trial_id])
    recorded = 0
    for i in range(len(grid)):
        result = grid[i]
        if result.error is None:
            continue
        spec = TrialSpec.from_dict(json.loads(result.config[Col.spec]))
        if spec.trial_id in have:  # the worker died after storing the row
            continue
        record_row(worker_died_row(spec, result.error, retries + 1, run_dir.name), store.path,
                   run_dir)  # fmt: skip
        recorded += 1
    return recorded


def worker_died_row(spec: TrialSpec, error: BaseException, attempts: int, run: str) -> dict:
    """The row of a trial whose worker process died under it."""
    detail = " ".join(str(error).split())[:2000]
    message = (
        f"WorkerDied: the Ray worker running this trial died after {attempts} attempt(s) "
        f"({type(error).__name__}: {detail}); killed from outside, out of memory, or a plugin "
        "that killed its own process"
    )
    return spec_row(
        spec, **{Col.status: ERROR, Col.error: message, Col.attempts: attempts, Col.run: run}
    )


def _trial_id_of(config: dict[str, Any]) -> str:
    return TrialSpec.from_dict(json.loads(config[Col.spec])).trial_id
