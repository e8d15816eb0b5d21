"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """A problem the user can fix (bad input, missing data); the message says how."""


class PluginError(BenchError):
    """A plugin broke the attack or defense contract."""


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> BenchError:
    """An error for an unknown registry name that suggests the closest known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return BenchError(f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(known)}.")


class Terminated(KeyboardInterrupt):
    """SIGTERM to the driver, raised where it is so a run stops as on Ctrl-C: running trials
    are stopped, the summary is printed, and a rerun resumes (exit status 143)."""
