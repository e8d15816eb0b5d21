"""Grid expansion: a preset's axes into trial specs, each component's parameters resolved in
full (defaults filled in) so a changed default makes a new trial id."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping
from typing import Any

from bench.core.models import model_names
from bench.core.rules import RATIO, integer
from bench.data import dataset_info, load_dataset
from bench.errors import BenchError, unknown_name_error
from bench.grid import registry
from bench.grid.presets import Preset
from bench.spec import TrialSpec

SEED = integer(0)


def _expand_all(names: tuple[str, ...], kind: str) -> tuple[str, ...]:
    """``all`` means every registered name; every other name must be registered too, so a
    typo beside ``all`` (``all,ablx``) is an error rather than silently dropped."""
    if "all" not in names:
        return names
    registered = registry.entries(kind)
    for name in names:
        if name != "all" and name not in registered:
            raise unknown_name_error(kind, name, registered)
    return tuple(sorted(registered))


def expand_grid(preset: Preset) -> list[TrialSpec]:
    """Validate the preset's grid and expand it into trial specs (deterministic order, each
    trial once). Loads each dataset (from the decoded cache) for its content hash."""
    grid = preset.grid
    attacks = _expand_all(grid.attacks, "attack")
    defenses = _expand_all(grid.defenses, "defense")
    for axis, values in {
        "datasets": grid.datasets,
        "attacks": attacks,
        "defenses": defenses,
        "ratios": grid.ratios,
        "seeds": grid.seeds,
    }.items():
        if not values:
            raise BenchError(f"the grid axis {axis!r} is empty")
    # The preset schema checked a TOML preset; overrides (--ratios, --seeds) meet its rules here.
    for ratio in grid.all_ratios():
        if RATIO.check(ratio):
            raise BenchError(f"poison ratio must be in (0, 1), got {ratio!r}")
    for seed in grid.seeds:
        if SEED.check(seed):
            raise BenchError(f"seeds must be non-negative integers, got {seed!r}")
    for dataset in grid.datasets:
        info = dataset_info(dataset)
        if not 0 <= grid.target < info.num_classes:
            raise BenchError(
                f"target class {grid.target} is out of range for {dataset} "
                f"({info.num_classes} classes: 0..{info.num_classes - 1})"
            )
        if preset.model_for(dataset) not in model_names():
            raise unknown_name_error("model", preset.model_for(dataset), model_names())
    if RATIO.check(grid.clean_fraction):
        raise BenchError(f"clean_fraction must be in (0, 1), got {grid.clean_fraction!r}")
    attack_params = {a: _resolved("attack", a, preset.attack_params) for a in attacks}
    revisions = {a: getattr(registry.get_entry("attack", a).load(), "revision", 1) for a in attacks}
    defense_revisions = {
        d: getattr(registry.get_entry("defense", d).load(), "revision", 1) for d in defenses
    }
    # An attack that poisons nothing (the clean baseline) runs once per seed, at ratio 0.
    poisons = {a: getattr(registry.get_entry("attack", a).load(), "poisons", True) for a in attacks}
    needs = {d: registry.get_entry("defense", d).load().needs for d in defenses}
    defense_params = {
        d: _resolved("defense", d, preset.defense_params, preset.name) for d in defenses
    }
    data = dataclasses.asdict(preset.data)
    data_hash = {
        d: load_dataset(d, preset.data.source, reuse=True).data_hash
        for d in dict.fromkeys(grid.datasets)
    }
    train = {d: dataclasses.asdict(preset.train_for(d)) for d in grid.datasets}
    specs = []
    cells = [
        (dataset, attack, ratio, seed, defense)
        for dataset, attack in itertools.product(grid.datasets, attacks)
        for ratio, seed, defense in itertools.product(
            grid.ratios_for(attack, dataset) if poisons[attack] else (0.0,), grid.seeds, defenses
        )
    ]
    for dataset, attack, ratio, seed, defense in cells:
        specs.append(
            TrialSpec(
                dataset=dataset,
                attack=attack,
                attack_params=attack_params[attack],
                ratio=float(ratio),
                target=grid.target,
                defense=defense,
                defense_params=defense_params[defense],
                model=preset.model_for(dataset),
                preset=preset.name,
                seed=seed,
                train=train[dataset],
                data=data,
                exclude_target_from_poison=grid.exclude_target_from_poison,
                reference=preset.reference,
                precision=preset.precision,
                clean_fraction=grid.clean_fraction if "clean_subset" in needs[defense] else 0.0,
                data_hash=data_hash[dataset],
                attack_revision=revisions[attack],
                defense_revision=defense_revisions[defense],
            )
        )
    return list({s.trial_id: s for s in specs}.values())  # a repeated value: each trial once


def _resolved(
    kind: str, name: str, overrides: Mapping[str, Mapping[str, Any]], preset: str = ""
) -> dict[str, Any]:
    """Full parameters (defaults filled in), so a changed default makes a new trial id. Without
    a section of the preset's own, a defense's budget for the preset (``Defense.presets``)."""
    cls = registry.get_entry(kind, name).load()
    chosen = overrides[name] if name in overrides else getattr(cls, "presets", {}).get(preset, {})
    component = cls(**dict(chosen))
    return json.loads(json.dumps(component.describe(), sort_keys=True))
