"""Stop what a driver's local Ray instance leaves behind when the driver dies without
``ray.shutdown()`` (SIGKILL, the OOM killer).

The kernel kills Ray's GCS server and raylet with the driver (Ray's fate-sharing), but its
dashboard and runtime-env agents, seeing the raylet gone, report its death to the GCS, which is
dead too, with a fixed 60 s timeout (``ray._private.utils.publish_error_to_driver``): they
linger 60-70 s, and no Ray setting shortens that. So the driver starts this watchdog, in a
session of its own, on a pipe, before ``ray.init``. While the driver lives, the watchdog notes
twice a second the processes descending from it (with their start times, so a reused pid is
never mistaken for one of them) and those carrying the driver's token in their environment
(``BENCH_RAY_RUN``: everything the instance starts inherits it, even after its parent died).
When the pipe closes without the driver's "done", the driver is gone, and the watchdog kills
what it noted. Linux (``/proc``); elsewhere it does nothing. Nothing here imports ray.

The local executor runs inside :func:`reaping` too: a trial's process inherits the token, so
what a plugin starts there, even in a session of its own, is killed when the grid ends.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

TOKEN_ENV = "BENCH_RAY_RUN"
_DONE = b"done"
WATCH_INTERVAL_S = 0.5
#: Sweeps after the driver died (seconds after the first): a process forked while one ran.
_SWEEPS_S = (0.0, 1.0, 2.0)
_PROC = Path("/proc")


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every process."""
    table = {}
    for entry in _PROC.iterdir() if _PROC.is_dir() else ():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_bytes()
            fields = stat[stat.rindex(b")") + 2 :].split()
            table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


def _carries(pid: int, needle: bytes) -> bool:
    with suppress(OSError):  # gone, or another user's
        return needle in (_PROC / str(pid) / "environ").read_bytes().split(b"\0")
    return False


def watched(token: str, roots: set[int], table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """pid -> start time of the descendants of ``roots`` and of the processes carrying
    ``token`` (this process excluded)."""
    needle = f"{TOKEN_ENV}={token}".encode()
    found = {pid for pid in table if _carries(pid, needle)} | (set(roots) & set(table))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return {pid: table[pid][1] for pid in found if pid in table}


def _kill(noted: dict[int, int], token: str) -> int:
    """SIGKILL what is still running of ``noted`` (same pid and start time), what carries the
    token, and their descendants; how many."""
    table = _process_table()
    alive = {pid for pid, started in noted.items() if table.get(pid, (0, -1))[1] == started}
    targets = watched(token, alive, table)
    for pid in targets:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(targets)


@contextmanager
def reaping() -> Iterator[str]:
    """Within the block, what this process starts is watched by a watchdog that kills it if
    this process dies; leaving the block stops the watchdog (after a sweep of processes still
    carrying the token)."""
    token = uuid.uuid4().hex
    watchdog = subprocess.Popen(
        [sys.executable, "-m", __name__, token, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the driver's group: a Ctrl-C or group kill spares it
    )
    saved = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = token
    try:
        yield token
    finally:
        if saved is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = saved
        with suppress(OSError):
            watchdog.stdin.write(_DONE)
            watchdog.stdin.close()
        try:
            watchdog.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()


def main(argv: list[str]) -> int:
    token, driver = argv[0], int(argv[1])
    noted: dict[int, int] = {}
    told = b""
    while True:
        ready, _, _ = select.select([sys.stdin.buffer], [], [], WATCH_INTERVAL_S)
        if ready:
            chunk = os.read(sys.stdin.fileno(), 64)
            if not chunk:  # EOF: the driver closed the pipe, or died
                break
            told += chunk
        if told != _DONE:
            table = _process_table()
            noted.update(watched(token, {driver} if driver in table else set(), table))
    if told == _DONE:  # a clean end: only processes still carrying the token, if any
        _kill({}, token)
        return 0
    noted.pop(driver, None)
    start = time.monotonic()
    for at in _SWEEPS_S:
        time.sleep(max(0.0, start + at - time.monotonic()))
        _kill(noted, token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
