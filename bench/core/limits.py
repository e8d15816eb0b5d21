"""Per-trial time limits, checked cooperatively where the time goes (training and evaluation
steps), so a trial that overruns stops cleanly, with a traceback of where it was, and becomes a
``timeout`` row. What this check cannot reach (a defense blocked in a sleep or a C call) the
trial's parent process stops: it kills the trial's process a grace period later
(:mod:`bench.run.isolation`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[tuple[float, float] | None] = ContextVar("bench_deadline", default=None)


class TrialTimeout(Exception):
    """The trial ran past its time limit."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Within this block, :func:`check_time_limit` raises once ``seconds`` have passed."""
    token = _deadline.set((time.monotonic() + seconds, seconds) if seconds else None)
    try:
        yield
    finally:
        _deadline.reset(token)


def check_time_limit() -> None:
    limit = _deadline.get()
    if limit is not None and time.monotonic() > limit[0]:
        raise TrialTimeout(f"the trial exceeded its time limit of {limit[1]:g} s")
