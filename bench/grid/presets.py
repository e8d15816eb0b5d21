"""Presets: TOML files holding a grid's axes and budgets, parsed and validated into a
:class:`Preset` (the schema in :mod:`bench.grid.preset_schema`), and command-line overrides."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.core.precision import PRECISIONS
from bench.core.train import TrainConfig
from bench.data import DATASETS
from bench.errors import BenchError, unknown_name_error
from bench.grid.preset_schema import validate_preset
from bench.grid.shapes import Grid, Preset
from bench.spec import DataBudget, Resources

PRESET_DIR = Path(__file__).parent.parent / "presets"


# --------------------------------------------------------------------------- loading

_SECTIONS = {
    "preset": {"name", "description", "reference", "sources"},
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
    path = _preset_path(name_or_path)
    return parse_preset(read_preset(path), where=str(path))


def _preset_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if not path.suffix:
        if str(name_or_path) not in builtin_presets():
            raise unknown_name_error("preset", str(name_or_path), builtin_presets())
        path = PRESET_DIR / f"{name_or_path}.toml"
    return path


def read_preset(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset file's TOML, with ``[preset] extends = "<preset>"`` resolved: the base preset's
    sections, each key of which the extending file's same section replaces (so an extending
    ``[defenses.abl]``, even empty, replaces the base's ABL settings wholesale). ``[preset]``
    itself (name, description, reference, sources) is never inherited."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"preset file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BenchError(f"cannot read preset file {path}: {exc}") from exc
    meta = raw.get("preset", {})
    base_name = meta.get("extends") if isinstance(meta, Mapping) else None
    if base_name is None:
        return raw
    if not isinstance(base_name, str) or not base_name:
        raise BenchError(f"{path}: [preset] extends must name a preset, got {base_name!r}")
    base_path = (
        (path.parent / base_name) if Path(base_name).suffix else _preset_path(base_name)
    ).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise BenchError(f"{path}: [preset] extends {base_name!r} makes a cycle")
    base = read_preset(base_path, (*_seen, path.resolve()))
    merged = {section: dict(table) for section, table in base.items()}
    for section, table in raw.items():
        if isinstance(table, Mapping) and isinstance(merged.get(section), Mapping):
            merged[section] = {**merged[section], **table}
        else:
            merged[section] = table
    # [preset] is the file's own: its name, and whether it follows a reference is not inherited
    merged["preset"] = {k: v for k, v in raw["preset"].items() if k != "extends"}
    return merged


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
            sources=dict(meta.get("sources", {})),
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
