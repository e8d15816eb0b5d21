"""Run each trial attempt in a child process that the parent can always stop, and that always
leaves a row.

A defense is arbitrary code: it may block in a C call, ignore signals, call ``os._exit``, crash
the interpreter or be killed by the kernel for memory. Run in the worker's own process, any of
these takes the worker with it (no row, no retry) or holds it past ``--trial-timeout``. Here the
child runs :func:`bench.trial.pipeline.run_trial_safely` and sends its row back through a
pipe, its log lines on the way (it also writes them to the trial's log); the parent

- kills it (its whole process group: SIGTERM, then SIGKILL) once it overruns its time limit and
  writes a ``timeout`` row (the child's own cooperative check usually ends it cleanly first);
- writes an ``error`` row saying how it died (exit code, signal; SIGKILL hints at the OOM
  killer) when it ends without a row.

Children start from multiprocessing's *forkserver* with torch and the trial code preloaded, so an
attempt starts in a fraction of a second instead of re-importing torch (*spawn*); they take the
parent's environment and ``sys.path`` at the moment they start (the GPUs a scheduler assigned,
``BENCH_*`` settings), run in a process group of their own, die with the parent, and can
write only beneath the caches and a private temporary directory (Landlock, where the kernel has
it: :mod:`bench.run.sandbox`), never into the results directory.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from bench.run.recording import trial_log_handler
from bench.run.sandbox import Confinement, confine_writes
from bench.schema import ERROR, OK, TIMEOUT, Col, complete_row
from bench.spec import TrialSpec

log = logging.getLogger("bench.isolation")

#: How children start. "forkserver" forks them from a server that imported torch and the trial
#: code once; "spawn" starts a fresh interpreter per attempt (seconds of imports each).
START_METHOD = "forkserver"
#: Imported once by the forkserver. torch._inductor is what torch.use_deterministic_algorithms
#: (every trial's seeding) imports: 1.4 s per child otherwise.
PRELOAD = ["torch", "torch._inductor", "bench.trial.pipeline"]
#: After SIGTERM, how long a child may take to exit before SIGKILL.
TERM_WAIT_S = 2.0
#: After its row arrives, how long a child may take to exit (a plugin's non-daemon thread can
#: keep it alive) before it is killed.
EXIT_WAIT_S = 5.0
#: Log lines kept for the error of a child that dies, and how that error shows them.
TAIL_LINES = 8
TAIL_HEADER = "the trial's last log lines:"
TAIL_PREFIX = "  | "
#: The caches of torch.compile (inductor, Triton), CUDA's JIT and torch's kernels, kept under the
#: cache directory unless set, so a confined trial can write them.
TOOL_CACHES = {
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
    "CUDA_CACHE_PATH": "cuda",
    "PYTORCH_KERNEL_CACHE_PATH": "torch-kernels",
}
#: Under the cache directory: one private TMPDIR per attempt, named by the parent's pid so one
#: left by a parent that died (SIGKILL leaves no chance to clean up) is swept by the next one.
TRIAL_TMP = "trial-tmp"


def kill_grace_s(time_limit_s: float) -> float:
    """Seconds past the time limit before the parent kills a child that has not stopped: the
    child's cooperative check (at training and evaluation steps) gets a moment to end it with a
    traceback of where it was."""
    return min(10.0, max(1.0, 0.1 * time_limit_s))


def describe_exit(exitcode: int | None) -> str:
    """How a child process ended, in words a plugin author can act on."""
    if exitcode is None:
        return "vanished (its exit status is unknown)"
    if exitcode >= 0:
        return (
            f"exited with code {exitcode} before reporting a result (sys.exit or os._exit in "
            "the attack or defense?)"
        )
    try:
        sig = signal.Signals(-exitcode)
    except ValueError:
        return f"was killed by signal {-exitcode}"
    hints = {
        signal.SIGKILL: "out of memory? the kernel's OOM killer sends SIGKILL, as does kill -9",
        signal.SIGSEGV: "segmentation fault: a crash in native code",
        signal.SIGBUS: "bus error: a crash in native code",
        signal.SIGABRT: "aborted: a failed assertion in native code",
        signal.SIGFPE: "arithmetic fault in native code",
        signal.SIGILL: "illegal instruction in native code",
    }
    hint = hints.get(sig)
    return f"was killed by {sig.name}" + (f" ({hint})" if hint else "")


# --------------------------------------------------------------------------- the child


@dataclass(frozen=True)
class _Job:
    """What a child needs, all picklable: the spec as JSON, the parent's environment."""

    spec: str
    gpus: float
    threads: int | None
    time_limit_s: float
    env: Mapping[str, str]
    sys_path: list[str]
    output_path: str | None
    tmp_dir: str | None = None  # the child's private TMPDIR, made and removed by the parent
    protect: tuple[str, ...] = ()  # places it must not write to (the results directory)


class _PipeLog(logging.Handler):
    def __init__(self, send: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        self.send(record.getMessage())


def _die_with_parent() -> None:
    """Kill this child and what it started once the parent is gone (its sentinel closes)."""
    wait([multiprocessing.parent_process().sentinel])
    os.killpg(0, signal.SIGKILL)


def _open_trial_log(path: str) -> logging.Logger:
    """Point this process's stdout and stderr at the trial's log (print() and a native crash's
    report from faulthandler land there) and return a logger appending to it. The child writes
    its own log lines: relayed through the parent, they could land after, or inside, the crash
    report that follows them."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.reconfigure(line_buffering=True)  # print()s keep their place among the lines
    trial_log = logging.getLogger("bench.isolation.trial_log")
    trial_log.handlers = [trial_log_handler(Path(path))]
    trial_log.setLevel(logging.INFO)
    trial_log.propagate = False
    return trial_log


def _confine(job: _Job) -> Confinement:
    """Let the trial write only beneath the caches, its private temporary directory and /dev;
    before any other thread starts (Landlock confines the calling thread and its offspring)."""
    from bench.core import settings

    writable = [settings.cache_dir(), settings.artifacts_dir()]
    if job.tmp_dir:
        os.environ["TMPDIR"] = job.tmp_dir
        tempfile.tempdir = job.tmp_dir  # the forkserver may have resolved another one
        writable.append(Path(job.tmp_dir))
    for env, default in TOOL_CACHES.items():  # else in /tmp or ~, out of a confined trial's reach
        writable.append(Path(os.environ.setdefault(env, str(settings.cache_dir() / default))))
    for place in writable:
        with suppress(OSError):  # a user-set cache that cannot be made: just not writable
            place.mkdir(parents=True, exist_ok=True)
    return confine_writes([*writable, Path("/dev")], protect=[Path(p) for p in job.protect])


def _child_main(conn: Connection, job: _Job) -> None:
    os.setpgrp()  # its own group: a kill reaches whatever the defense started too
    os.environ.clear()
    os.environ.update(job.env)
    sys.path[:] = job.sys_path
    trial_log = _open_trial_log(job.output_path) if job.output_path else None
    confinement = _confine(job)  # after opening its log, which may lie in the results directory
    threading.Thread(target=_die_with_parent, daemon=True, name="die-with-parent").start()
    faulthandler.enable()
    lock = threading.Lock()

    def send(kind: str, value: Any) -> None:
        with lock:
            try:
                conn.send((kind, value))
            except OSError:  # the parent is gone
                os.killpg(0, signal.SIGKILL)

    def report(line: str) -> None:
        if trial_log is not None:  # written here, so it precedes what the child does next
            trial_log.info("%s", line)
        send("log", str(line))

    harness = logging.getLogger("bench")  # cache builds and rebuilds, artifact locks
    harness.handlers = [_PipeLog(report)]
    harness.setLevel(logging.INFO)
    harness.propagate = False
    report(confinement.describe())

    import torch

    from bench.core import precision
    from bench.trial.pipeline import pick_device, run_trial_safely
    from bench.trial.provenance import device_name

    spec = TrialSpec.from_dict(json.loads(job.spec))
    if job.threads:  # as run_trial_safely sets them, so the device says so from the start
        torch.set_num_threads(max(1, int(job.threads)))
    device = pick_device(job.gpus)
    used = precision.resolve(spec.precision, device)
    send("hello", {Col.pid: os.getpid(), Col.device: device_name(device), Col.precision_used: used})
    row = run_trial_safely(
        spec, gpus=job.gpus, threads=job.threads, report=report, time_limit_s=job.time_limit_s
    )
    send("row", row)


# --------------------------------------------------------------------------- the parent


_MAIN_SWAP = threading.Lock()


@contextmanager
def _without_main_module() -> Iterator[None]:
    """Start children without the parent's ``__main__``: multiprocessing would import it in
    every child (under Ray, the worker's script, which imports ray), and a trial needs nothing
    from it. The module is hidden only while ``Process.start`` records what the child prepares."""
    with _MAIN_SWAP:
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main


def _context(method: str) -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: another user's process, alive
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _private_tmp(trial_id: str) -> Path:
    """A fresh TMPDIR for one attempt, after sweeping those whose parent process is gone."""
    from bench.core import settings

    root = settings.cache_dir() / TRIAL_TMP
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        owner = old.name.split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{trial_id}-", dir=root))


class TrialProcess:
    """One attempt of one trial in a child process. Non-blocking: :meth:`poll` handles what
    happened and returns the attempt's row once the child is gone, so one driver can watch many
    (:meth:`waitables` and :meth:`seconds_left` say what to wait for, and how long).

    The child's log lines go to ``report``, or, given ``output_path`` (the trial's log file), to
    that file, which the child writes itself along with what it prints and a crash report;
    ``report`` then gets only the parent's own messages. The last lines are kept either way for
    the error of a child that dies.

    The child can write only beneath the caches, a private temporary directory (removed when it
    ends) and /dev, where the platform allows it (:mod:`bench.run.sandbox`); ``protect`` names
    what must stay out of its reach, the results directory."""

    def __init__(
        self,
        spec: TrialSpec,
        *,
        gpus: float = 0.0,
        threads: int | None = None,
        time_limit_s: float = 0.0,
        report: Callable[[str], None] = log.info,
        output_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        protect: Iterable[Path] = (),
        start_method: str = START_METHOD,
    ):
        self.spec = spec
        self.report = report
        self.time_limit_s = time_limit_s
        self.output_path = output_path
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.hello: dict[str, Any] = {}
        self.row: dict[str, Any] | None = None  # the child's own row, once sent
        self._job = _Job(
            spec=spec.canonical(),
            gpus=gpus,
            threads=threads,
            time_limit_s=time_limit_s,
            env={**os.environ, **(env or {})},
            sys_path=list(sys.path),
            output_path=str(output_path) if output_path else None,
            protect=tuple(str(p) for p in protect),
        )
        self._ctx = _context(start_method)
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._pid: int | None = None
        self._exitcode: int | None = None
        self._started_at = 0.0
        self._t0 = 0.0
        self._ended_at: float | None = None
        self._timed_out = False
        self._next_signal: tuple[float, signal.Signals] | None = None  # (when, what)
        self._tmp_dir: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        receive, send = self._ctx.Pipe(duplex=False)
        self._tmp_dir = str(_private_tmp(self.spec.trial_id))
        job = replace(self._job, tmp_dir=self._tmp_dir)
        self._process = self._ctx.Process(
            target=_child_main, args=(send, job), name=f"trial-{self.spec.trial_id}"
        )
        self._started_at = time.time()
        try:
            with _without_main_module():
                self._process.start()
        except BaseException:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            raise
        self._t0 = time.monotonic()  # the limit counts from a running child, not server start
        self._pid = self._process.pid
        send.close()  # the child holds the only write end: EOF when it is gone
        self._conn = receive

    @property
    def pid(self) -> int | None:
        """The child's process id (it also names the child's process group)."""
        return self.hello.get(Col.pid, self._pid)

    def waitables(self) -> list[Any]:
        """What :func:`multiprocessing.connection.wait` should watch for this attempt."""
        assert self._process is not None
        return [self._process.sentinel] + ([self._conn] if self._conn else [])

    def kill_deadline(self) -> float | None:
        """Monotonic time at which the parent stops the child (None: no limit)."""
        if not self.time_limit_s:
            return None
        return self._t0 + self.time_limit_s + kill_grace_s(self.time_limit_s)

    def seconds_left(self) -> float | None:
        """Seconds until :meth:`poll` has something to do besides reading the child."""
        due = self._next_signal[0] if self._next_signal else self.kill_deadline()
        return None if due is None else max(0.0, due - time.monotonic())

    def poll(self) -> dict[str, Any] | None:
        """Handle what the child sent and what is due; the attempt's row once it is over."""
        assert self._process is not None
        if self._ended_at is not None:
            return self._result()
        self._drain()
        if not self._process.is_alive():
            self._drain(until_eof=True)  # everything it sent before it ended
            self._finish()
            return self._result()
        now = time.monotonic()
        if self._next_signal is not None:  # stopping it: escalate when due
            due, sig = self._next_signal
            if now >= due:
                self._signal_group(sig)
                self._next_signal = (now + TERM_WAIT_S, signal.SIGKILL)
        elif self.row is not None:  # it sent its row: it gets a moment to exit
            self._next_signal = (now + EXIT_WAIT_S, signal.SIGKILL)
        elif (deadline := self.kill_deadline()) is not None and now >= deadline:
            self._timed_out = True
            self._signal_group(signal.SIGTERM)
            self._next_signal = (now + TERM_WAIT_S, signal.SIGKILL)
        return None

    def stop(self) -> None:
        """Kill the attempt now if it still runs (the driver is stopping); blocks briefly."""
        if self._process is None or self._ended_at is not None:
            return
        if self._process.is_alive():
            self._signal_group(signal.SIGTERM)
            self._process.join(TERM_WAIT_S)
            self._signal_group(signal.SIGKILL)
            self._process.join(TERM_WAIT_S)
        self._finish()

    # ------------------------------------------------------------------ internals

    def _result(self) -> dict[str, Any]:
        if self.row is None:
            self.row = self._timeout_row() if self._timed_out else self._died_row()
        return self.row

    def _drain(self, until_eof: bool = False) -> None:
        while self._conn is not None:
            try:
                if not self._conn.poll(0.5 if until_eof else 0):
                    break
                kind, value = self._conn.recv()
            except (EOFError, OSError):
                self._conn.close()
                self._conn = None
                break
            if kind == "log":
                self.tail.append(value)
                if self.output_path is None:  # else the child wrote it to the log itself
                    self.report(value)
            elif kind == "hello":
                self.hello = value
            elif kind == "row":
                self.row = value

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._pid is not None
        try:
            os.killpg(self._pid, sig)  # the child leads its own group ...
        except (ProcessLookupError, PermissionError):
            with suppress(ProcessLookupError):
                os.kill(self._pid, sig)  # ... unless it died before setting it up

    def _finish(self) -> None:
        """The child is gone (or being abandoned): sweep its group, release what it held."""
        if self._ended_at is not None or self._process is None:
            return
        self._ended_at = time.monotonic()
        if self._process.is_alive():
            self._signal_group(signal.SIGKILL)
            self._process.join(TERM_WAIT_S)
        elif self.hello:  # leftovers of its group (processes the defense started)
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, signal.SIGKILL)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._exitcode = self._process.exitcode
        if self._exitcode is not None:
            self._process.close()
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)

    def _seconds(self) -> float:
        return (self._ended_at or time.monotonic()) - self._t0

    def _failure_row(self, status: str, summary: str) -> dict[str, Any]:
        from bench.trial.pipeline import component_columns, pick_device
        from bench.trial.provenance import provenance, spec_columns

        lines = "".join(f"{TAIL_PREFIX}{line}\n" for line in self.tail)
        where = f"; its log: {self.output_path}" if self.output_path else ""
        error = (f"{TAIL_HEADER}\n{lines}" if lines else "") + f"{summary}{where}"
        return complete_row(
            {
                **spec_columns(self.spec),
                **component_columns(self.spec),
                Col.status: status,
                Col.error: error,
                Col.wall_seconds: self._seconds(),
                **provenance(pick_device(0.0), self._started_at),
                Col.device: self.hello.get(Col.device, ""),
                Col.precision_used: self.hello.get(Col.precision_used, ""),
                Col.pid: self.pid,
            }
        )

    def _died_row(self) -> dict[str, Any]:
        how = describe_exit(self._exitcode)
        return self._failure_row(
            ERROR,
            f"TrialDied: the trial's process (pid {self.pid}) {how} after {self._seconds():.1f} s",
        )

    def _timeout_row(self) -> dict[str, Any]:
        return self._failure_row(
            TIMEOUT,
            f"TrialTimeout: the trial exceeded its time limit of {self.time_limit_s:g} s and did "
            "not stop at a training or evaluation step (blocked in the defense?); its process "
            f"(pid {self.pid}) was killed after {self._seconds():.1f} s",
        )


@dataclass(eq=False)
class IsolatedTrial:
    """A trial's attempts (1 + ``retries``), each a :class:`TrialProcess`; non-blocking, so one
    driver can run several at once (:mod:`bench.run.local_executor`)."""

    spec: TrialSpec
    retries: int = 0
    report: Callable[[str], None] = log.info
    options: dict[str, Any] = field(default_factory=dict)  # TrialProcess keyword arguments
    log_failures: bool = True  # report each failed attempt's error (the trial's log keeps them)
    attempt: int = 0
    current: TrialProcess | None = None

    @property
    def attempts(self) -> int:
        return 1 + max(0, int(self.retries))

    def start(self) -> None:
        self.attempt += 1
        self.current = TrialProcess(self.spec, report=self.report, **self.options)
        self.current.start()

    def waitables(self) -> list[Any]:
        return self.current.waitables() if self.current else []

    def seconds_left(self) -> float | None:
        return self.current.seconds_left() if self.current else None

    def poll(self) -> dict[str, Any] | None:
        """The trial's final row (with ``attempts``) once it succeeded or ran out of attempts."""
        assert self.current is not None
        row = self.current.poll()
        if row is None:
            return None
        if row[Col.status] != OK and self.log_failures:
            self.report(f"attempt {self.attempt}/{self.attempts}: {row[Col.error]}")
        if row[Col.status] != OK and self.attempt < self.attempts:
            self.start()
            return None
        row[Col.attempts] = self.attempt
        return row

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()


def run_isolated(
    spec: TrialSpec,
    *,
    retries: int = 0,
    report: Callable[[str], None] = log.info,
    log_failures: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Run a trial (and its retries) in child processes and return its row; never raises for
    anything the trial does. ``options``: :class:`TrialProcess`'s keyword arguments."""
    trial = IsolatedTrial(
        spec, retries=retries, report=report, options=options, log_failures=log_failures
    )
    trial.start()
    try:
        while (row := trial.poll()) is None:
            wait(trial.waitables(), trial.seconds_left())
        return row
    finally:
        trial.stop()
