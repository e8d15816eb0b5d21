"""What a preset parses into: the grid's axes (:class:`Grid`) and the whole :class:`Preset`.
Each plain field declares its rule (:mod:`bench.core.rules`), which the preset schema reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.core.rules import RATIO, boolean, integer, list_of, ruled, string
from bench.core.train import TrainConfig
from bench.spec import DataBudget, Resources


@dataclass(frozen=True)
class Grid:
    datasets: tuple[str, ...] = ruled(list_of(string(), required=True))
    attacks: tuple[str, ...] = ruled(list_of(string(), required=True))
    defenses: tuple[str, ...] = ruled(list_of(string(), required=True))
    ratios: tuple[float, ...] = ruled(list_of(RATIO, required=True))
    seeds: tuple[int, ...] = ruled(list_of(integer(0), required=True))
    target: int = ruled(integer(0), 0)
    #: Poison-label draws skip the target class (the issue's rule); False = BackdoorBench's rule.
    exclude_target_from_poison: bool = ruled(boolean(), True)
    #: Clean training data handed to defenses that declare the 'clean_subset' need.
    clean_fraction: float = ruled(RATIO, 0.05)
    #: Per-attack ratios replacing ``ratios`` (clean-label attacks whose target class cannot
    #: supply the grid's ratio run at their spec's recommended one), e.g. {"sig": [0.05]}.
    attack_ratios: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    #: The same per dataset, taking precedence: {"gtsrb": {"sig": [0.005]}}.
    dataset_attack_ratios: Mapping[str, Mapping[str, tuple[float, ...]]] = field(
        default_factory=dict
    )

    #: Attacks or defenses the grid names but leaves out unless asked for explicitly, with the
    #: reason the leaderboard shows (e.g. a defense that needs the paper budget).
    left_out: Mapping[str, str] = field(default_factory=dict)

    def ratios_for(self, attack: str, dataset: str | None = None) -> tuple[float, ...]:
        per_dataset = self.dataset_attack_ratios.get(dataset or "", {})
        return tuple(per_dataset.get(attack, self.attack_ratios.get(attack, self.ratios)))

    def all_ratios(self) -> list[float]:
        nested = [r for rs in self.attack_ratios.values() for r in rs]
        nested += [r for d in self.dataset_attack_ratios.values() for rs in d.values() for r in rs]
        return [*self.ratios, *nested]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    #: The published reference table this preset's protocol follows ("" for none), e.g.
    #: "backdoorbench-preactresnet18"; ``bench reproduce`` compares its cells with that table.
    reference: str
    grid: Grid
    models: Mapping[str, str]  # dataset -> model name, "default" for the rest
    data: DataBudget
    train: TrainConfig
    resources: Resources
    attack_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    defense_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Requested numeric precision: "auto" | "fp32" | "bf16" (see ``bench.core.precision``).
    precision: str = "auto"
    #: Per-dataset training budgets replacing ``train`` (``[train.gtsrb]`` in the TOML).
    dataset_train: Mapping[str, TrainConfig] = field(default_factory=dict)
    #: Where each method's settings come from, by method name (``[preset.sources]``).
    sources: Mapping[str, str] = field(default_factory=dict)

    def model_for(self, dataset: str) -> str:
        return self.models.get(dataset, self.models["default"])

    def train_for(self, dataset: str) -> TrainConfig:
        return self.dataset_train.get(dataset, self.train)
