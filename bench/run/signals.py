"""SIGTERM stops a grid as Ctrl-C does: the summary line, then exit 143, instead of a driver
killed mid-write (or, once Ray is up, its C++ crash handler's stack dump and exit 134)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.errors import Terminated

_RECEIVED = threading.Event()


def _raise_terminated(signum: int, frame: Any) -> None:
    _RECEIVED.set()  # Ray Tune may re-raise the interrupt as a plain KeyboardInterrupt
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
    _RECEIVED.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sigterm_received() -> bool:
    """Whether the interrupt that stopped the run was a SIGTERM (Tune may re-raise it as a
    plain KeyboardInterrupt)."""
    return _RECEIVED.is_set()


def reinstall() -> None:
    """Take SIGTERM back after ``ray.init`` installed its own handler (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
