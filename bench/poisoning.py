"""A cell's poisoned training and test sets, built once and cached as an artifact.

Every defense of a cell (dataset, attack, ratio, seed, ...) sees the same poisoned data, so the
attack's image transforms (LC's PGD, IAD's generator passes, SSBA's encoder, ...) run once per
cell instead of once per trial. A cache hit returns exactly the tensors a rebuild would produce:
poisoning is seeded, and the caller re-seeds afterwards so nothing downstream depends on whether
the sets were built or loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from attacks.base import (
    Attack,
    PoisonedTestSet,
    PoisonedTrainSet,
    poison_test_set,
    poison_train_set,
)
from bench import precision
from bench.artifacts import ArtifactCache
from bench.config import TrialSpec
from bench.data import Dataset

KIND = "poisoned_sets"


def cell_spec(spec: TrialSpec, data: Dataset) -> dict[str, Any]:
    """Everything a cell's poisoned data and undefended model depend on (the artifact key)."""
    return {
        "dataset": spec.dataset,
        "data_source": data.source,
        "data": dict(spec.data),
        "attack": spec.attack,
        "attack_params": dict(spec.attack_params),
        "ratio": spec.ratio,
        "target": spec.target,
        "exclude_target_from_poison": spec.exclude_target_from_poison,
        "model": spec.model,  # surrogate-based attacks depend on the model and its training
        "train": dict(spec.train),
        "seed": spec.seed,
        "precision": precision.in_force() or "default",
    }


@dataclass(frozen=True)
class PoisonedSets:
    train: PoisonedTrainSet
    test: PoisonedTestSet
    cache: str  # "hit" or "built"


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def poisoned_sets(
    spec: TrialSpec,
    data: Dataset,
    attack: Attack,
    device: torch.device,
    attack_version: str = "",
) -> PoisonedSets:
    """The cell's poisoned training set and triggered test set (``attack`` already fitted)."""

    def build() -> dict[str, Any]:
        train = poison_train_set(
            attack,
            data.train_x,
            data.train_y,
            spec.ratio,
            spec.target,
            seed=spec.seed,
            device=device,
            exclude_target=spec.exclude_target_from_poison,
        )
        test = poison_test_set(attack, data.test_x, data.test_y, spec.target, device, spec.seed)
        return {"train": _as_dict(train), "test": _as_dict(test)}

    key = {**cell_spec(spec, data), "attack_version": attack_version}
    fetched = ArtifactCache().get_or_build(KIND, key, build)
    value = fetched.value
    return PoisonedSets(
        PoisonedTrainSet(**value["train"]),
        PoisonedTestSet(**value["test"]),
        "hit" if fetched.hit else "built",
    )
