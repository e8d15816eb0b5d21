"""Presets (TOML files holding the grid axes and budgets), trial specs and grid expansion."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import schema
from bench.core.models import model_names
from bench.core.precision import PRECISIONS
from bench.core.train import TrainConfig
from bench.data import DATASETS, dataset_info, load_dataset
from bench.errors import BenchError, unknown_name_error
from bench.grid import registry
from bench.grid.preset_schema import validate_preset

PRESET_DIR = Path(__file__).parent.parent / "presets"


@dataclass(frozen=True)
class DataBudget:
    """How much of each dataset a preset uses (0 = all), drawn once with ``subset_seed``."""

    train_size: int = 0
    test_size: int = 0
    subset_seed: int = 0
    #: "official": the official pixels where they can be had (CIFAR-10's torchvision release),
    #: the JPEG export only as a marked fallback; "any": the first source found.
    source: str = "any"


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent_trials: int = 0  # 0: as many as the resources allow
    trial_timeout_s: float = 0.0  # a trial running longer becomes a 'timeout' row; 0: no limit
    retries: int = 0  # extra attempts for a trial that fails


@dataclass(frozen=True)
class Grid:
    datasets: tuple[str, ...]
    attacks: tuple[str, ...]
    defenses: tuple[str, ...]
    ratios: tuple[float, ...]
    seeds: tuple[int, ...]
    target: int = 0
    #: Poison-label draws skip the target class (the issue's rule); False = BackdoorBench's rule.
    exclude_target_from_poison: bool = True
    #: Clean training data handed to defenses that declare the 'clean_subset' need.
    clean_fraction: float = 0.05
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

    def model_for(self, dataset: str) -> str:
        return self.models.get(dataset, self.models["default"])

    def train_for(self, dataset: str) -> TrainConfig:
        return self.dataset_train.get(dataset, self.train)


# --------------------------------------------------------------------------- loading

_SECTIONS = {
    "preset": {"name", "description", "reference"},
    "grid": {f.name for f in dataclasses.fields(Grid)},
    "models": None,  # free-form mapping
    "data": {f.name for f in dataclasses.fields(DataBudget)},
    "train": {f.name for f in dataclasses.fields(TrainConfig)} | {"precision"} | set(DATASETS),
    "resources": {f.name for f in dataclasses.fields(Resources)},
    "attacks": None,
    "defenses": None,
}


def builtin_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """A built-in preset by name, or a preset TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        if str(name_or_path) not in builtin_presets():
            raise unknown_name_error("preset", str(name_or_path), builtin_presets())
        path = PRESET_DIR / f"{name_or_path}.toml"
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"preset file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BenchError(f"cannot read preset file {path}: {exc}") from exc
    return parse_preset(raw, where=str(path))


def parse_preset(raw: Mapping[str, Any], where: str = "preset") -> Preset:
    validate_preset(raw, where)  # every key's type and range, before anything else
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise BenchError(f"{where}: unknown section(s) {unknown}; known: {sorted(_SECTIONS)}")
    for section, allowed in _SECTIONS.items():
        keys = set(raw.get(section, {}))
        if allowed is not None and keys - allowed:
            raise BenchError(
                f"{where}: unknown key(s) {sorted(keys - allowed)} in [{section}]; "
                f"known: {sorted(allowed)}"
            )
    meta = raw.get("preset", {})
    if "name" not in meta:
        raise BenchError(f"{where}: [preset] needs a name")
    try:
        grid_raw = dict(raw.get("grid", {}))
        for axis in ("datasets", "attacks", "defenses", "ratios", "seeds"):
            if axis not in grid_raw:
                raise BenchError(f"{where}: [grid] needs {axis!r}")
            grid_raw[axis] = tuple(grid_raw[axis])
        ratios = dict(grid_raw.get("attack_ratios", {}))
        grid_raw["attack_ratios"] = {
            str(k): tuple(v) for k, v in ratios.items() if not isinstance(v, Mapping)
        }
        grid_raw["dataset_attack_ratios"] = {
            str(dataset): {str(k): tuple(v) for k, v in per_attack.items()}
            for dataset, per_attack in ratios.items()
            if isinstance(per_attack, Mapping)
        }
        models = dict(raw.get("models", {}))
        models.setdefault("default", "cnn_small")
        train = dict(raw.get("train", {}))
        precision = str(train.pop("precision", "auto"))
        if precision not in PRECISIONS:
            raise BenchError(f"{where}: [train] precision must be one of {PRECISIONS}")
        per_dataset = {k: train.pop(k) for k in list(train) if isinstance(train[k], Mapping)}
        base_train = TrainConfig(**train)
        return Preset(
            name=str(meta["name"]),
            description=str(meta.get("description", "")),
            reference=str(meta.get("reference", "")),
            grid=Grid(**grid_raw),
            models=models,
            data=DataBudget(**raw.get("data", {})),
            train=base_train,
            precision=precision,
            dataset_train={
                str(d): dataclasses.replace(base_train, **dict(o)) for d, o in per_dataset.items()
            },
            resources=Resources(**raw.get("resources", {})),
            attack_params=raw.get("attacks", {}),
            defense_params=raw.get("defenses", {}),
        )
    except (TypeError, ValueError) as exc:
        raise BenchError(f"{where}: {exc}") from exc


def with_overrides(
    preset: Preset, precision: str | None = None, **axes: Iterable[Any] | None
) -> Preset:
    """The preset with some grid axes (datasets, attacks, ...) replaced; None keeps an axis.
    Values keep their first occurrence's order and appear once."""
    changes: dict[str, Any] = {k: tuple(dict.fromkeys(v)) for k, v in axes.items() if v is not None}
    if "ratios" in changes:  # explicit ratios apply to every attack
        changes["attack_ratios"] = {}
        changes["dataset_attack_ratios"] = {}
    asked = {n for axis in ("attacks", "defenses") for n in changes.get(axis, ())}
    changes["left_out"] = {k: v for k, v in preset.grid.left_out.items() if k not in asked}
    if precision is not None and precision not in PRECISIONS:
        raise BenchError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    return dataclasses.replace(
        preset,
        grid=dataclasses.replace(preset.grid, **changes),
        precision=precision or preset.precision,
    )


# --------------------------------------------------------------------------- trial specs


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

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.canonical())

    def canonical(self) -> str:
        """The spec as canonical JSON (computed once: a grid asks for every trial's id often)."""
        cached = self.__dict__.get("_canonical")
        if cached is None:
            spec = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
            if spec[schema.Col.attack_revision] == 1:  # absent at 1: older ids stay valid
                del spec[schema.Col.attack_revision]
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
    for ratio in grid.all_ratios():
        if not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
            raise BenchError(f"poison ratio must be in (0, 1), got {ratio!r}")
    for seed in grid.seeds:
        if not isinstance(seed, int) or seed < 0:
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
    if not 0.0 < grid.clean_fraction < 1.0:
        raise BenchError(f"clean_fraction must be in (0, 1), got {grid.clean_fraction!r}")
    attack_params = {a: _resolved("attack", a, preset.attack_params) for a in attacks}
    revisions = {a: getattr(registry.get_entry("attack", a).load(), "revision", 1) for a in attacks}
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
            grid.ratios_for(attack, dataset), grid.seeds, defenses
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
