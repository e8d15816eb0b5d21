"""Time spent blocked on a lock another process holds, counted apart from the work it delays.

A post-training defense that starts while its cell's ``none`` trial still trains the backdoored
model waits on that artifact's lock. The wait is not the defense's cost, so the artifact cache
takes its locks through :func:`hold`, and a trial that wants its waits counted runs under
:func:`counting`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from filelock import BaseFileLock, Timeout


@dataclass
class WaitClock:
    seconds: float = 0.0


_clock: ContextVar[WaitClock | None] = ContextVar("bench_lock_wait", default=None)


@contextmanager
def counting() -> Iterator[WaitClock]:
    """Within this block, every blocked lock acquisition adds its wait to the yielded clock
    (and, when nested, to the enclosing block's clock too)."""
    clock = WaitClock()
    token = _clock.set(clock)
    try:
        yield clock
    finally:
        _clock.reset(token)
        outer = _clock.get()
        if outer is not None:
            outer.seconds += clock.seconds


@contextmanager
def hold(lock: BaseFileLock) -> Iterator[None]:
    """Hold ``lock``. If another process holds it, block until it is free and count the wait."""
    try:
        lock.acquire(timeout=0)  # a single attempt: Timeout at once if another process holds it
    except Timeout:
        start = time.perf_counter()
        lock.acquire()
        clock = _clock.get()
        if clock is not None:
            clock.seconds += time.perf_counter() - start
    try:
        yield
    finally:
        lock.release()
