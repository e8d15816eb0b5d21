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
from bench.core.seeding import seed_everything
from bench.core.train import TrainConfig
from bench.data import Dataset
from bench.spec import TrialSpec
from bench.trial.poisoning import (
    GroundTruth,
    PoisonedData,
    PoisonedSets,
    PoisonedTestSet,
    ground_truth,
    poisoned_sets,
)
from bench.trial.resolved import ResolvedTrial, model_factory

log = logging.getLogger("bench.trial")


def attack_context(
    spec: TrialSpec,
    data: Dataset,
    device: torch.device,
    report: Callable[[str], None] = log.info,
    build_artifacts: bool = True,
    *,
    make_model: Callable[[], nn.Module] | None = None,
    train_config: TrainConfig | None = None,
) -> AttackContext:
    """What the trial's attack may use to prepare itself (shared with the attack gallery, so
    both find the same cached artifacts). A trial passes its own model factory and recipe
    (:class:`~bench.trial.resolved.ResolvedTrial`); the gallery lets them be made here."""
    return AttackContext(
        images=data.train_x,
        labels=data.train_y,
        num_classes=data.info.num_classes,
        target=spec.target,
        device=device,
        seed=spec.seed,
        ratio=spec.ratio,
        make_model=make_model or model_factory(spec.model, data),
        model_name=spec.model,
        train_config=train_config or TrainConfig(**spec.train),
        allows_flip=data.info.allows_flip,
        pixel_std=tuple(data.info.std),
        build_artifacts=build_artifacts,
        log=report,
    )


@dataclass(frozen=True)
class PoisonedCell:
    """The cell a defense runs on, and what preparing it cost."""

    spec: TrialSpec
    data: Dataset
    attack: Attack
    attack_ctx: AttackContext
    sets: PoisonedSets
    seconds: float  # fitting the attack and poisoning (or loading the poisoned sets)
    wait_seconds: float  # blocked on artifacts another process was building (not in seconds)

    @property
    def train(self) -> PoisonedData:
        return self.sets.train

    @property
    def test(self) -> PoisonedTestSet:
        return self.sets.test

    def ground_truth(self) -> GroundTruth:
        """Which samples were poisoned, derived afresh from the seeded draws: the harness asks
        for it to choose the clean subset and to score the defense, and keeps it nowhere a
        defense could reach (not in the cell, not in a cached artifact)."""
        s = self.spec
        return ground_truth(
            self.attack, self.data.train_y, s.ratio, s.target, seed=s.seed,
            exclude_target=s.exclude_target_from_poison,
        )  # fmt: skip

    @property
    def n_poison(self) -> int:
        return int(self.ground_truth().poison_mask.sum())

    @property
    def n_cross(self) -> int:
        cross = self.ground_truth().cross_mask
        return 0 if cross is None else int(cross.sum())

    def artifact_log(self) -> str:
        """The attack's artifact lookups as JSON: kind, built/hit, seconds."""
        return json.dumps(
            [
                {"kind": k, "cache": c, "seconds": round(t, 2)}
                for k, c, t in self.attack_ctx.artifact_log
            ]
        )


def poison_cell(trial: ResolvedTrial) -> PoisonedCell:
    """Fit the trial's attack on the clean split and build (or load) the cell's poisoned sets."""
    spec, attack = trial.spec, trial.attack
    start = time.perf_counter()
    with lockwait.counting() as waited:
        ctx = attack_context(
            spec,
            trial.data,
            trial.device,
            trial.report,
            make_model=trial.make_model,
            train_config=trial.train_config,
        )
        attack.fit(ctx)
        sets = poisoned_sets(
            trial.cell_key, spec, trial.data, attack, trial.device, trial.attack_entry.version
        )
    seed_everything(trial.seed("after_cell"), trial.device)  # cached or built: same RNG after
    seconds = time.perf_counter() - start - waited.seconds
    cell = PoisonedCell(spec, trial.data, attack, ctx, sets, seconds, waited.seconds)
    trial.report(
        f"attack {spec.attack}: {cell.n_poison} poisoned samples, "
        f"{cell.n_cross} cross samples ({cell.seconds:.1f}s)"
    )
    return cell
