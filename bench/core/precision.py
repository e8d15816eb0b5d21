"""Numeric precision of training and evaluation: bf16 autocast where the hardware runs it fast.

A trial asks for ``auto``, ``fp32`` or ``bf16`` (preset ``[train] precision``, ``--precision``).
``auto`` resolves to bf16 on CUDA and on CPUs with native bf16 units (``avx512_bf16`` or
``amx_bf16``, which oneDNN uses for bf16 convolutions), and to fp32 elsewhere: on a CPU without
them bf16 is emulated and slower than fp32. The resolved precision applies to every forward pass
the trial runs through the shared trainer and evaluation (``bench.core.train.autocast``), is part of
every cache key of what the trial trains, and is recorded in the result row.

``$BENCH_AUTO_PRECISION`` (``fp32`` or ``bf16``) overrides what ``auto`` resolves to, and the
precision of code run outside a trial: a record run that spans machines pins it, and the test
suite runs whole at either precision (``BENCH_AUTO_PRECISION=fp32 make test``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch

from bench.core.settings import AUTO_PRECISION_ENV

PRECISIONS = ("auto", "fp32", "bf16")
#: CPU feature flags (Linux /proc/cpuinfo) of native bf16 arithmetic.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")

AUTO_ENV = AUTO_PRECISION_ENV

_requested: ContextVar[str | None] = ContextVar("bench_precision", default=None)


@functools.cache
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 feature flags this CPU reports (empty where there are none or the
    platform does not say)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return tuple(f for f in BF16_CPU_FLAGS if f in flags)


def cpu_has_fast_bf16() -> bool:
    return bool(cpu_bf16_flags()) and torch.backends.mkldnn.is_available()


def forced() -> str | None:
    """``$BENCH_AUTO_PRECISION`` where set, validated."""
    value = os.environ.get(AUTO_ENV, "").strip()
    if not value:
        return None
    if value not in ("fp32", "bf16"):
        raise ValueError(f"${AUTO_ENV} must be 'fp32' or 'bf16', not {value!r}")
    return value


def resolve(requested: str, device: torch.device | str) -> str:
    """``fp32`` or ``bf16``: what ``requested`` means on ``device``."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {requested!r}")
    if requested != "auto":
        return requested
    if pinned := forced():
        return pinned
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and cpu_has_fast_bf16()):
        return "bf16"
    return "fp32"


def current(device: torch.device | str) -> str:
    """The precision in force for ``device``: the trial's (see :func:`use_precision`), or, outside
    a trial, ``$BENCH_AUTO_PRECISION``, else bf16 on CUDA and fp32 elsewhere."""
    requested = _requested.get()
    if requested is None:
        return forced() or ("bf16" if torch.device(device).type == "cuda" else "fp32")
    return resolve(requested, device)


def in_force() -> str | None:
    """The precision a trial set (a resolved "fp32"/"bf16" inside a trial), or None outside
    one. Cache keys of what a trial trains include it."""
    return _requested.get()


@contextmanager
def use_precision(requested: str) -> Iterator[None]:
    """Within this block, training and evaluation run at ``requested`` precision."""
    resolve(requested, "cpu")  # validates
    token = _requested.set(requested)
    try:
        yield
    finally:
        _requested.reset(token)
