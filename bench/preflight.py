"""Checks that run before a grid starts, so bad input fails fast, clearly, and touches nothing."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from bench import registry
from bench.config import TrialSpec
from bench.data import load_dataset
from bench.errors import BenchError
from bench.poisoning import select_poison_indices


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BenchError(f"--address must be host:port (e.g. 10.0.0.5:6379), got {address!r}")
    return host, int(port)


def check_resources(address: str | None, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Resource requests that cannot be met here, and cluster addresses nobody answers at."""
    if cpus_per_trial <= 0:
        raise BenchError(f"--cpus-per-trial must be > 0, got {cpus_per_trial}")
    if gpus_per_trial < 0:
        raise BenchError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial}")
    if address:
        host, port = parse_address(address)
        try:
            with socket.create_connection((host, port), timeout=3):
                pass
        except OSError as exc:
            raise BenchError(
                f"cannot reach a Ray cluster at --address {address} ({exc}). Start one with "
                "'ray start --head' and pass the address it prints, or leave --address out to "
                "run on this machine."
            ) from exc
    elif gpus_per_trial > 0:
        import torch

        if not torch.cuda.is_available():
            raise BenchError(
                f"--gpus-per-trial {gpus_per_trial} asked for, but this machine has no CUDA GPU "
                "that torch can use. Use --gpus-per-trial 0, or --address a cluster with GPUs."
            )


def check_poison_capacity(specs: Iterable[TrialSpec]) -> None:
    """Every ratio must be satisfiable by the (subset of the) dataset each trial will use."""
    labels_by_budget = {}
    for spec in specs:
        budget = spec.data_budget()
        key = (spec.dataset, budget)
        if key not in labels_by_budget:
            data = load_dataset(spec.dataset).subset(
                budget.train_size, budget.test_size, budget.subset_seed
            )
            labels_by_budget[key] = data.train_y
        policy = registry.get_entry("attack", spec.attack).load().label_policy
        try:
            select_poison_indices(
                labels_by_budget[key],
                spec.ratio,
                spec.target,
                label_policy=policy,
                seed=spec.seed,
                exclude_target=spec.exclude_target_from_poison,
            )
        except BenchError as exc:
            raise BenchError(
                f"{spec.dataset} / {spec.attack} ({policy}) / ratio {spec.ratio}: {exc}"
            ) from None
