"""Checks that run before a grid starts, so bad input fails fast, clearly, and touches nothing."""

from __future__ import annotations

import math
import os
import resource
import shutil
import socket
import tempfile
from pathlib import Path

from bench.core import settings
from bench.errors import BenchError


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BenchError(f"--address must be host:port (e.g. 10.0.0.5:6379), got {address!r}")
    return host, int(port)


#: A gRPC server (Ray's GCS) answers the HTTP/2 client preface with a SETTINGS frame.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS_FRAME = 0x04
PROBE_TIMEOUT_S = 5.0


def check_resources(address: str | None, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Resource requests that cannot be met here, and cluster addresses where no Ray answers."""
    for flag, value in (("--cpus-per-trial", cpus_per_trial), ("--gpus-per-trial", gpus_per_trial)):
        if not math.isfinite(value):
            raise BenchError(f"{flag} must be a finite number, got {value}")
    if cpus_per_trial <= 0:
        raise BenchError(f"--cpus-per-trial must be > 0, got {cpus_per_trial}")
    if gpus_per_trial < 0:
        raise BenchError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial}")
    if gpus_per_trial == 0 and cpus_per_trial < 1:
        # Every trial runs at least one thread: packing CPU trials below one core each would
        # run more trials at once than there are cores, all of them slower.
        raise BenchError(
            f"--cpus-per-trial {cpus_per_trial:g}: a CPU trial needs at least 1 CPU (it runs "
            "at least one thread). Use --max-concurrent to run fewer trials at once; fractional "
            "CPUs are for GPU trials (--gpus-per-trial)."
        )
    if address:
        check_ray_address(address)
    elif gpus_per_trial > 0:
        import torch

        if not torch.cuda.is_available():
            raise BenchError(
                f"--gpus-per-trial {gpus_per_trial} asked for, but this machine has no CUDA GPU "
                "that torch can use. Use --gpus-per-trial 0, or --address a cluster with GPUs."
            )


def check_ray_address(address: str) -> None:
    """Something must listen at ``address`` and speak gRPC (HTTP/2), as a Ray cluster's GCS
    does; ray.init would otherwise retry for many minutes against, say, the dashboard's port."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            if os.environ.get("RAY_USE_TLS", "0").lower() in {"1", "true"}:
                return  # a TLS handshake comes first; ray.init's bounded connect decides
            sock.settimeout(PROBE_TIMEOUT_S)
            sock.sendall(_HTTP2_PREFACE)
            reply = sock.recv(64)
    except TimeoutError:
        reply = None
    except OSError as exc:
        raise BenchError(
            f"cannot reach a Ray cluster at --address {address} ({exc}). Start one with "
            "'ray start --head' and pass the address it prints, or leave --address out to "
            "run on this machine."
        ) from exc
    if reply is None or len(reply) < 9 or reply[3] != _SETTINGS_FRAME:
        answer = (
            f"no answer within {PROBE_TIMEOUT_S:g} s"
            if reply is None
            else f"it answered {reply[:40]!r}"
            if reply
            else "it closed the connection"
        )
        raise BenchError(
            f"--address {address} is not a Ray cluster: something listens there but does not "
            f"speak Ray's protocol ({answer}). Pass the GCS address 'ray start --head' prints "
            "(port 6379 by default), not the dashboard's (8265) or another service's."
        )


def check_results_dir(path: Path) -> None:
    """The results directory must be a directory this process can write (it is created if
    missing), so a run never computes trials whose rows it cannot keep."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise BenchError(f"results directory {path}: {existing} is a file, not a directory")
    table = path / "results.parquet"
    if table.exists() and not table.is_file():
        raise BenchError(f"results table {table} is not a file; move it away or pick another dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        for directory in (path, path / "runs"):
            if directory.is_dir() or directory == path:
                fd, probe = tempfile.mkstemp(prefix=".bench-write-check-", dir=directory)
                os.close(fd)
                os.unlink(probe)
    except OSError as exc:
        raise BenchError(
            f"results directory {path} is not writable ({exc.strerror or exc}); fix its "
            "permissions or choose another with --results-dir"
        ) from exc


#: The smallest file-size limit (``ulimit -f``) a grid can live with: the decoded dataset cache
#: (150 MB for CIFAR-10's training split), checkpoints and Ray's session files.
MIN_FILE_SIZE = 1 << 30


def check_file_size_limit() -> None:
    """A file-size limit below :data:`MIN_FILE_SIZE` is refused up front: past it a write kills
    the process (SIGXFSZ) or fails half-way (Ray: "the node timed out during startup"; torch:
    "unexpected pos"), never with a clear message."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and soft < MIN_FILE_SIZE:
        raise BenchError(
            f"the file-size limit (ulimit -f) is {soft // 1024:,} KB; the dataset cache, "
            f"checkpoints and Ray's logs need files of up to {MIN_FILE_SIZE >> 20:,} MB: raise it "
            "(`ulimit -f unlimited`) and rerun"
        )


def check_free_space(places: dict[str, Path]) -> None:
    """Each disk the grid writes to (named by what goes there) has the free space
    ``BENCH_MIN_FREE_MB`` asks for (1,024 MB by default): a full disk is refused before
    anything runs, with where and how much, rather than as Ray's or torch's traceback."""
    need = settings.min_free_mb()
    short = []
    for what, path in places.items():
        existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
        free = shutil.disk_usage(existing).free / (1 << 20)
        if free < need:
            short.append(f"{free:,.0f} MB free on {existing} ({what})")
    if short:
        raise BenchError(
            f"not enough disk space: {'; '.join(short)}; a grid needs {need:,.0f} MB on each. "
            f"Free some space, or point the directory elsewhere (--results-dir, "
            f"{settings.CACHE_DIR_ENV}, {settings.ARTIFACT_DIR_ENV}, RAY_TMPDIR); "
            f"{settings.MIN_FREE_MB_ENV} sets the floor"
        )


def disk_places(results_dir: Path, executor: str) -> dict[str, Path]:
    """Where a grid writes: its results, the decoded data, the artifacts, Ray's session."""
    places = {
        "results": results_dir,
        "decoded data": settings.cache_dir(),
        "artifacts": settings.artifacts_dir(),
    }
    if executor != "local":
        places["Ray's session files"] = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir()))
    return places
