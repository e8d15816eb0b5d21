"""A trial's spec, resolved once: its data subset, its attack and defense (registry entries and
instances), its training recipe, its model factory, its cell's artifact key and stage cache.

Every step of a trial (poisoning the cell, training the undefended model, running the defense,
evaluating) takes this object instead of re-deriving the same things from the raw spec, so each
is built in one place: ``TrainConfig(**spec.train)``, the model factory and the cell key once
per trial.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn

from attacks.base import Attack
from bench.api import Defense
from bench.core.models import build_model
from bench.core.seeding import offset_seed
from bench.core.stages import CellStageCache
from bench.core.train import TrainConfig
from bench.data import Dataset, load_dataset
from bench.errors import BenchError
from bench.grid import registry
from bench.spec import TrialSpec
from bench.trial.poisoning import cell_spec

log = logging.getLogger("bench.trial")


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


def model_factory(model: str, data: Dataset) -> Callable[[], nn.Module]:
    """A fresh, randomly initialised ``model`` for ``data``'s classes and normalisation."""
    info = data.info

    def make_model() -> nn.Module:
        return build_model(model, info.num_classes, info.mean, info.std)

    return make_model


@dataclass(frozen=True, eq=False)
class ResolvedTrial:
    """One trial, resolved from its spec (see the module's docstring)."""

    spec: TrialSpec
    device: torch.device
    data: Dataset
    attack_entry: registry.Entry
    defense_entry: registry.Entry
    attack: Attack
    defense: Defense
    #: The preset's training recipe (the attacker's and the defense's default).
    train_config: TrainConfig
    report: Callable[[str], None]

    @classmethod
    def resolve(
        cls, spec: TrialSpec, device: torch.device, report: Callable[[str], None] = log.info
    ) -> ResolvedTrial:
        data = load_cell_data(spec, report)
        attack_entry = registry.get_entry("attack", spec.attack)
        defense_entry = registry.get_entry("defense", spec.defense)
        return cls(
            spec=spec,
            device=device,
            data=data,
            attack_entry=attack_entry,
            defense_entry=defense_entry,
            attack=attack_entry.load()(**spec.attack_params),
            defense=defense_entry.load()(**spec.defense_params),
            train_config=TrainConfig(**spec.train),
            report=report,
        )

    @cached_property
    def make_model(self) -> Callable[[], nn.Module]:
        """The trial's model factory (the attack, the undefended model and the defense share it)."""
        return model_factory(self.spec.model, self.data)

    @cached_property
    def cell_key(self) -> dict[str, Any]:
        """The cell's artifact key: what its poisoned sets and undefended model depend on
        (taken under the trial's precision, which is part of it)."""
        return cell_spec(self.spec, self.data)

    @cached_property
    def stage_cache(self) -> CellStageCache:
        """Defense stages shared by the defenses of this cell (:mod:`bench.core.stages`)."""
        return CellStageCache(self.cell_key)

    @property
    def who(self) -> str:
        """The defense as errors name it: its name and the package providing it."""
        return f"defense {self.spec.defense!r} ({self.defense_entry.package})"

    def seed(self, stream: str) -> int:
        """The seed of one of the trial's released streams (:mod:`bench.core.seeding`)."""
        return offset_seed(self.spec.seed, stream)
