"""The ``bench`` command line: run a grid, render the leaderboard, list components, perf.

The parser (:mod:`bench.cli.parser`) and the commands (:mod:`bench.cli.commands`) live apart;
this module configures logging and turns errors into one line and an exit code."""

from __future__ import annotations

import errno
import logging
import signal
import sys
import threading

from bench.cli.parser import build_parser
from bench.errors import BenchError, Terminated

log = logging.getLogger("bench")

__all__ = ["build_parser", "main"]


def _configure_logging(level: int) -> None:
    """Console output of the ``bench`` loggers; runs add a file handler under the run dir."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.handlers = [
        h
        for h in log.handlers
        if not isinstance(h, logging.StreamHandler) or isinstance(h, logging.FileHandler)
    ] + [handler]
    log.setLevel(level)
    log.propagate = False


#: Write failures that are the machine's, not the harness's: said in one line, exit 2.
DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}
DISK_ERRNOS[errno.EFBIG] = "a file hit the file-size limit (ulimit -f)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    if threading.current_thread() is threading.main_thread():
        # Past `ulimit -f` a write fails (EFBIG, said below) instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        return args.fn(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"error: {DISK_ERRNOS[exc.errno]}{where}; free space (or raise the limit) and rerun "
            "the same command: finished trials keep their rows",
            file=sys.stderr,
        )
        return 2
    except Terminated:
        print(
            "terminated (SIGTERM): running trials were stopped; rerun the same command to "
            "finish the grid",
            file=sys.stderr,
        )
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to finish the grid", file=sys.stderr)
        return 130
