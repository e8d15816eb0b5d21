"""A trial's cell, prepared: its data subset, the fitted attack and the poisoned sets.

Every trial of a cell (same dataset, attack, ratio, seed, ...) prepares the same cell; the
expensive parts (attack artifacts, poisoned sets) come from the artifact cache after the first.
The global RNG is re-seeded at the end, so what runs next does not depend on cache hits.
Time spent waiting for another trial's artifact is booked apart from the attack's own time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from attacks.base import Attack, AttackContext
from bench.core import lockwait
from bench.core.models import build_model
from bench.data import Dataset, load_dataset
from bench.errors import BenchError
from bench.spec import TrialSpec
from bench.trial.poisoning import PoisonedSets, PoisonedTestSet, PoisonedTrainSet, poisoned_sets

log = logging.getLogger("bench.trial")


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch; on CPU also insist on deterministic kernels (same seed, same numbers)."""
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


def load_cell_data(spec: TrialSpec, report: Callable[[str], None] = log.info) -> Dataset:
    """The preset's subset of the trial's dataset."""
    budget = spec.data_budget()
    data = load_dataset(spec.dataset, budget.source).subset(
        budget.train_size, budget.test_size, budget.subset_seed
    )
    if spec.data_hash and data.data_hash != spec.data_hash:
        raise BenchError(
            f"the {spec.dataset} data here ({data.source}, hash {data.data_hash}) differs from the "
            f"data the grid was planned with (hash {spec.data_hash}); give every node the same data"
        )
    report(
        f"data {spec.dataset}: {len(data.train_y)} train / {len(data.test_y)} test ({data.source})"
    )
    return data


def model_factory(spec: TrialSpec, data: Dataset) -> Callable[[], nn.Module]:
    info = data.info

    def make_model() -> nn.Module:
        return build_model(spec.model, info.num_classes, info.mean, info.std)

    return make_model


def attack_context(
    spec: TrialSpec,
    data: Dataset,
    device: torch.device,
    report: Callable[[str], None] = log.info,
    build_artifacts: bool = True,
) -> AttackContext:
    """What the trial's attack may use to prepare itself (shared with the attack gallery, so
    both find the same cached artifacts)."""
    return AttackContext(
        images=data.train_x,
        labels=data.train_y,
        num_classes=data.info.num_classes,
        target=spec.target,
        device=device,
        seed=spec.seed,
        ratio=spec.ratio,
        make_model=model_factory(spec, data),
        model_name=spec.model,
        train_config=spec.train_config(),
        allows_flip=data.info.allows_flip,
        pixel_std=tuple(data.info.std),
        build_artifacts=build_artifacts,
        log=report,
    )


@dataclass(frozen=True)
class PoisonedCell:
    """The cell a defense runs on, and what preparing it cost."""

    data: Dataset
    attack: Attack
    attack_ctx: AttackContext
    sets: PoisonedSets
    seconds: float  # fitting the attack and poisoning (or loading the poisoned sets)
    wait_seconds: float  # blocked on artifacts another process was building (not in seconds)

    @property
    def train(self) -> PoisonedTrainSet:
        return self.sets.train

    @property
    def test(self) -> PoisonedTestSet:
        return self.sets.test

    @property
    def n_poison(self) -> int:
        return int(self.train.poison_mask.sum())

    @property
    def n_cross(self) -> int:
        return 0 if self.train.cross_mask is None else int(self.train.cross_mask.sum())

    def artifact_log(self) -> str:
        """The attack's artifact lookups as JSON: kind, built/hit, seconds."""
        return json.dumps(
            [
                {"kind": k, "cache": c, "seconds": round(t, 2)}
                for k, c, t in self.attack_ctx.artifact_log
            ]
        )


def poison_cell(
    spec: TrialSpec,
    data: Dataset,
    attack: Attack,
    attack_version: str,
    device: torch.device,
    report: Callable[[str], None] = log.info,
) -> PoisonedCell:
    """Fit ``attack`` on the clean split and build (or load) the cell's poisoned sets."""
    start = time.perf_counter()
    with lockwait.counting() as waited:
        ctx = attack_context(spec, data, device, report)
        attack.fit(ctx)
        sets = poisoned_sets(spec, data, attack, device, attack_version)
    seed_everything(spec.seed + 1, device)  # the same RNG state whether the sets were cached
    seconds = time.perf_counter() - start - waited.seconds
    cell = PoisonedCell(data, attack, ctx, sets, seconds, waited.seconds)
    report(
        f"attack {spec.attack}: {cell.n_poison} poisoned samples, "
        f"{cell.n_cross} cross samples ({cell.seconds:.1f}s)"
    )
    return cell
