"""Where the harness reads data and writes caches and results (environment variables first)."""

from __future__ import annotations

import os
from pathlib import Path

#: A directory holding datasets (ImageFolder trees or the offline archives).
DATA_DIR_ENV = "BENCH_DATA_DIR"
#: Where decoded datasets and other artifacts are cached.
CACHE_DIR_ENV = "BENCH_CACHE_DIR"
#: Where artifacts (backdoored models, attack state) are cached; shared storage on a cluster.
ARTIFACT_DIR_ENV = "BENCH_ARTIFACT_DIR"
#: Where the results table, leaderboard and run logs are written.
RESULTS_DIR_ENV = "BENCH_RESULTS_DIR"
#: Set to 1 to forbid network downloads (tests, air-gapped clusters).
OFFLINE_ENV = "BENCH_OFFLINE"
#: Set to 1 to run training forward passes through ``torch.compile`` (worth it on GPUs).
COMPILE_ENV = "BENCH_COMPILE"
#: "fp32" or "bf16": what precision "auto" resolves to (and the precision outside a trial).
AUTO_PRECISION_ENV = "BENCH_AUTO_PRECISION"
#: Free space (MB) a grid needs on each disk it writes to before it starts (default 1024).
MIN_FREE_MB_ENV = "BENCH_MIN_FREE_MB"

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_data_dirs() -> list[Path]:
    """Documented search path for datasets, after ``$BENCH_DATA_DIR``: ``data/`` and
    ``../shared/data`` relative to the working directory, then to the harness checkout."""
    dirs: list[Path] = []
    for base in (Path.cwd(), PROJECT_ROOT):
        for candidate in (base / "data", base.parent / "shared" / "data"):
            if candidate.resolve() not in {d.resolve() for d in dirs}:
                dirs.append(candidate)
    return dirs


def cache_dir() -> Path:
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "backdoor-leaderboard"


def artifacts_dir() -> Path:
    env = os.environ.get(ARTIFACT_DIR_ENV)
    return Path(env).expanduser() if env else cache_dir() / "artifacts"


def results_dir() -> Path:
    env = os.environ.get(RESULTS_DIR_ENV)
    return (Path(env).expanduser() if env else Path.cwd() / "results").resolve()


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in {"1", "true", "yes"}


def compile_models() -> bool:
    return os.environ.get(COMPILE_ENV, "").lower() in {"1", "true", "yes"}


def min_free_mb() -> float:
    return float(os.environ.get(MIN_FREE_MB_ENV, "1024"))
