"""The Ray Tune executor: connect to (or start) Ray, fan the trials out over its workers as a
Tune grid, and record every trial, including one whose worker died under it.

Each worker runs its trial in a child process (:mod:`bench.run.isolation`) and writes the row
itself (:mod:`bench.run.recording`); the driver only watches progress. A local instance
listens on loopback only (``LOCAL_ONLY_ENV``); a cluster is joined only when asked
(``--address``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.run import signals
from bench.run.recording import (
    Progress,
    close_logger,
    concurrency,
    record_row,
    spec_row,
    trial_label,
    trial_logger,
)
from bench.schema import ERROR, OK, Col
from bench.spec import Resources, TrialSpec
from bench.store import ResultsStore

log = logging.getLogger("bench.runner")


def run_ray(
    todo: list[TrialSpec],
    store: ResultsStore,
    run_dir: Path,
    start: float,
    resources: Resources,
    address: str | None,
) -> None:
    """Run ``todo`` on Ray: a local instance (stopped with the driver, even if it is killed:
    :mod:`bench.run.ray_reaper`) or the cluster at ``address``."""
    from bench.run.ray_reaper import reaping

    with reaping() if not address else nullcontext():
        _connect_ray(address, resources.gpus_per_trial, resources.cpus_per_trial)
        try:
            _fit_with_tune(todo, store, run_dir, start, resources)
        finally:
            import ray

            ray.shutdown()


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
            protect=[Path(config["store"]).parent],  # the results directory
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


#: What Ray's core logs (on fd 2, from C++) when the cluster wants a token this process lacks.
AUTH_FAILURE_MARKS = ("InvalidAuthToken", "Unauthenticated")
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def auth_failure_message(address: str) -> str:
    """One line naming the cause Ray only logs: the cluster uses token authentication."""
    mode = os.environ.get(AUTH_MODE_ENV, "")
    if mode != "token":
        cause = f"this process is not in token mode (${AUTH_MODE_ENV} is {mode or 'unset'})"
    else:
        cause = "the token this process presents is not the cluster's"
    return (
        f"cannot join the Ray cluster at --address {address}: it uses token authentication and "
        f"{cause} (Ray: InvalidAuthToken). Set {AUTH_MODE_ENV}=token and the head's token in "
        "RAY_AUTH_TOKEN, or in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token "
        "('ray get-auth-token' on the head prints it), as on every node; see docs/operating.md."
    )


@contextmanager
def _stderr_into(sink: io.StringIO) -> Iterator[None]:
    """File descriptor 2 into ``sink`` for the block: Ray's core writes why a join failed there
    (from C++, beside Python's ``sys.stderr``), and the error should say it in one line. The
    caller writes the text back out where it explains nothing new."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            sink.write(capture.read().decode(errors="replace"))


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
        said = io.StringIO()
        try:
            with (
                _environment(**{GCS_CONNECT_ATTEMPTS_ENV: attempts}),
                _loopback_only() if local_only else nullcontext(),
                _stderr_into(said),
            ):
                ray.init(address=address, **kwargs)
        except Exception as exc:  # ConnectionError, TimeoutError, ValueError in various versions
            if any(mark in said.getvalue() for mark in AUTH_FAILURE_MARKS):
                raise BenchError(auth_failure_message(address)) from exc
            sys.stderr.write(said.getvalue())
            raise BenchError(
                f"cannot join the Ray cluster at --address {address}: {exc}. "
                "Start it with 'ray start --head' or check the address (host:port)."
            ) from exc
        sys.stderr.write(said.getvalue())
    else:
        # A local instance needs no outside peer: nothing of it may listen beyond loopback.
        env[LOCAL_ONLY_ENV] = "0"
        with _loopback_only():
            ray.init(address="local", **kwargs)
    signals.reinstall()  # ray.init installed its own SIGTERM handler
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
