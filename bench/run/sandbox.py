"""Keep a trial's process from writing outside the places the harness gives it (Linux Landlock).

A defense is arbitrary code running with the user's rights: it could overwrite the results
table, another trial's log or a cached artifact's neighbour. The trial's child process confines
itself, before any plugin code runs, so that it can create, change or delete files only beneath
the directories it needs (the cache and artifact directories, a private temporary directory,
``/dev``); reading stays unrestricted. Files it opened before (its own log) stay writable.

Landlock (ABI 3: Linux 6.2+, unprivileged) is the only mechanism used; elsewhere (macOS, older
kernels, kernels booted without it) :func:`confine_writes` changes nothing and says why, and the
results table's journal is what protects the record (:mod:`bench.store`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# The Landlock system calls have these numbers on every architecture that has them (they came
# after the unified syscall table); the constants are from <linux/landlock.h>.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_ARCHES = {"x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x"}
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

_WRITE_FILE = 1 << 1
_REMOVE_DIR, _REMOVE_FILE = 1 << 4, 1 << 5
_MAKE = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, symlink
_REFER = 1 << 13  # ABI 2: link or rename a file into another directory
_TRUNCATE = 1 << 14  # ABI 3
#: Below ABI 3 (Linux 6.2) a confined process could still truncate any file (the table, its
#: journal) and, at ABI 1, could not even rename across its own directories: not worth claiming.
MIN_ABI = 3


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # struct landlock_path_beneath_attr is packed
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass(frozen=True)
class Confinement:
    """What :func:`confine_writes` did: ``applied``, and the writable places or why not."""

    applied: bool
    detail: str

    def describe(self) -> str:
        if self.applied:
            return f"writes confined (Landlock) to {self.detail}"
        return f"writes not confined: {self.detail}"


def _libc() -> ctypes.CDLL:
    """libc with ``syscall`` and ``prctl`` taking longs: both read their arguments as longs, and
    a plain int passed through varargs may leave the register's upper half undefined."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    return libc


def _syscall(libc: ctypes.CDLL, number: int, *args: object) -> int:
    """``syscall(number, ...)``; plain ints become longs, pointers and None pass as they are."""
    passed = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return int(libc.syscall(ctypes.c_long(number), *passed))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none (or not Linux)."""
    if platform.system() != "Linux" or platform.machine().lower() not in _ARCHES:
        return 0
    version = _syscall(_libc(), _SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    return max(0, version)


def _write_rights() -> int:
    rights = _WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE
    return rights | _REFER | _TRUNCATE  # abi >= MIN_ABI


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _beneath(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def confine_writes(writable: Iterable[Path], protect: Iterable[Path] = ()) -> Confinement:
    """Allow this process (and what it starts from now on) to write only beneath ``writable``.

    Call it while the process has one thread: Landlock confines the calling thread and the
    threads and processes it creates, so with other threads running nothing is confined.
    ``protect`` names places that must end up unwritable (the results directory): if one lies
    beneath a writable directory, nothing is confined either. Either way the returned
    :class:`Confinement` says so, rather than pretend."""
    places = sorted({Path(p).resolve() for p in writable if Path(p).is_dir()})
    places = [p for p in places if not any(q != p and _beneath(p, q) for q in places)]
    for guarded in (Path(p).resolve() for p in protect):
        inside = next((p for p in places if _beneath(guarded, p)), None)
        if inside is not None:
            return Confinement(False, f"{guarded} lies inside the writable {inside}")
    abi = landlock_abi()
    if abi < MIN_ABI:
        if platform.system() != "Linux":
            why = "not Linux"
        elif abi == 0:
            why = "this kernel has no Landlock"
        else:
            why = f"this kernel's Landlock ABI {abi} cannot stop truncation (needs {MIN_ABI}: 6.2)"
        return Confinement(False, f"{why} (the results journal still guards the record)")
    threads = _thread_count()
    if threads > 1:
        return Confinement(False, f"{threads} threads run, and Landlock would confine one")
    libc = _libc()
    rights = _write_rights()
    handled = ctypes.c_uint64(rights)  # struct landlock_ruleset_attr's first field suffices
    ruleset = _syscall(libc, _SYS_CREATE_RULESET, ctypes.byref(handled), 8, 0)
    if ruleset < 0:
        return Confinement(False, f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for place in places:
            fd = os.open(place, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(allowed_access=rights, parent_fd=fd)
                if _syscall(
                    libc, _SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0
                ):
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule({place})")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if _syscall(libc, _SYS_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return Confinement(False, f"{exc.strerror}: {reason}")
    finally:
        os.close(ruleset)
    return Confinement(True, ", ".join(str(p) for p in places) or "nowhere")
