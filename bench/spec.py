"""What identifies one trial: its spec (hashed into the trial id), the data budget it draws and
the resources it asks for. Low in the house: every wing that handles a trial imports it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench import schema
from bench.core.rules import integer, number, ruled, string
from bench.core.train import TrainConfig
from bench.data.sources import SOURCE_MODES


@dataclass(frozen=True)
class DataBudget:
    """How much of each dataset a preset uses (0 = all), drawn once with ``subset_seed``."""

    train_size: int = ruled(integer(0), 0)
    test_size: int = ruled(integer(0), 0)
    subset_seed: int = ruled(integer(0), 0)
    #: "official": the official pixels where they can be had (CIFAR-10's torchvision release),
    #: the JPEG export only as a marked fallback; "any": the first source found.
    source: str = ruled(string(SOURCE_MODES, what="data source"), "any")


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for."""

    cpus_per_trial: float = ruled(number(0.0, low_open=True), 1.0)
    gpus_per_trial: float = ruled(number(0.0), 0.0)
    #: 0: as many as the resources allow.
    max_concurrent_trials: int = ruled(integer(0), 0)
    #: A trial running longer becomes a 'timeout' row; 0: no limit.
    trial_timeout_s: float = ruled(number(0.0), 0.0)
    #: Extra attempts for a trial that fails.
    retries: int = ruled(integer(0), 0)


@dataclass(frozen=True)
class TrialSpec:
    """Everything that determines one trial's numbers. Its id hashes its canonical form."""

    dataset: str
    attack: str
    attack_params: Mapping[str, Any]
    ratio: float
    target: int
    defense: str
    defense_params: Mapping[str, Any]
    model: str
    preset: str
    seed: int
    train: Mapping[str, Any]
    data: Mapping[str, Any]
    exclude_target_from_poison: bool = True
    #: The published reference the preset's protocol follows ("" for none).
    reference: str = ""
    #: Requested precision ("auto" | "fp32" | "bf16"); the row records the one used.
    precision: str = "auto"
    #: Fraction of the training set given to defenses that need clean data (0 if they do not).
    clean_fraction: float = 0.0
    #: Content hash of the decoded dataset (bench.data): results on other data are other trials.
    data_hash: str = ""
    #: The attack's code revision (``Attack.revision``): results of older code are other trials.
    attack_revision: int = 1
    #: The defense's code revision (``Defense.revision``): results of older code are other trials.
    defense_revision: int = 1

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.canonical())

    def canonical(self) -> str:
        """The spec as canonical JSON (computed once: a grid asks for every trial's id often)."""
        cached = self.__dict__.get("_canonical")
        if cached is None:
            spec = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
            for revision in (schema.Col.attack_revision, schema.Col.defense_revision):
                if spec[revision] == 1:  # absent at 1: older ids stay valid
                    del spec[revision]
            cached = json.dumps(spec, sort_keys=True, separators=(",", ":"))
            object.__setattr__(self, "_canonical", cached)  # a cache, not a field
        return cached

    @property
    def trial_id(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    @property
    def config_id(self) -> str:
        """Which parameter version of its cell this trial is: the id without the seed."""
        return schema.config_id_of(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialSpec:
        return cls(**d)

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.train)

    def data_budget(self) -> DataBudget:
        return DataBudget(**self.data)
