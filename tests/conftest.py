"""Shared fixtures. Real data comes from $BENCH_DATA_DIR or the documented defaults
(``../shared/data`` beside the checkout); decoded arrays are cached once per machine."""

from __future__ import annotations

import pytest
import torch

from bench.core import precision
from bench.data import Dataset, load_dataset


def pytest_report_header(config) -> str:
    """Which precision training tests run at: tests of training outcomes hold at both (run the
    suite with BENCH_AUTO_PRECISION=fp32 or =bf16 to check either on any CPU)."""
    flags = ", ".join(precision.cpu_bf16_flags()) or "no native bf16 units"
    pinned = precision.forced()
    return (
        f"precision outside a trial: {precision.current('cpu')}; 'auto' in trials: "
        f"{precision.resolve('auto', 'cpu')} "
        f"({'$' + precision.AUTO_ENV if pinned else 'CPU: ' + flags})"
    )


@pytest.fixture(autouse=True)
def _private_artifacts(tmp_path, monkeypatch):
    """Every test trains its own models: a cached backdoored model from an earlier run must
    never let a training test pass without training."""
    monkeypatch.setenv("BENCH_ARTIFACT_DIR", str(tmp_path / "artifacts"))


@pytest.fixture
def two_threads():
    """Training tests use both cores (and measured their floors that way)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cifar10() -> Dataset:
    return load_dataset("cifar10")


@pytest.fixture(scope="session")
def gtsrb() -> Dataset:
    return load_dataset("gtsrb")


@pytest.fixture
def cifar_batch(cifar10: Dataset) -> torch.Tensor:
    """64 real CIFAR-10 training images of every class (uint8 NCHW)."""
    return cifar10.subset(64, 1, seed=0).train_x.clone()


# The hostile-input tests' fixtures (tests/core/test_data_hostile.py, tests/run/test_driver_*.py,
# tests/run/test_hostile_plugins.py); the autouse one restores the `bench` logger after main().
from tests.hostile_support import (  # noqa: E402
    _restore_bench_logger,  # noqa: F401
    hostile_plugins,  # noqa: F401
    http_server,  # noqa: F401
    isolated_data,  # noqa: F401
    real_cifar_archive,  # noqa: F401
)
