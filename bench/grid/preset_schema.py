"""The preset schema: every key's type and range, checked before anything runs.

A TOML preset is plain data, so a typo'd type (``epochs = "abc"``, ``target = 0.5``) or an
impossible value (``train_size = -49000``) would otherwise reach the dataclasses or the trials and
fail there, or worse, run. :func:`validate_preset` checks every section and key against
:data:`SCHEMA` and refuses sections for unknown attacks and defenses; the parameters inside an
``[attacks.X]`` / ``[defenses.Y]`` section are validated by the component itself
(:mod:`bench.core.params`). All problems are reported together, on one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.core.models import model_names
from bench.core.precision import PRECISIONS
from bench.core.train import SCHEDULES
from bench.data import DATASETS, SOURCE_MODES
from bench.errors import BenchError, unknown_name_error
from bench.grid import registry


@dataclass(frozen=True)
class Rule:
    """What one key must hold: ``check`` returns None, or what is wrong with a value."""

    check: Callable[[Any], str | None]
    required: bool = False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low: int | None = None) -> Rule:
    def check(value: Any) -> str | None:
        if not _is_int(value):
            return "must be an integer" + (f" >= {low}" if low is not None else "")
        if low is not None and value < low:
            return f"must be an integer >= {low}"
        return None

    return Rule(check)


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Rule:
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    if low is not None and high is not None:
        wanted = f"a number in {left}{low:g}, {high:g}{right}"
    elif low is not None:
        wanted = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        wanted = "a finite number"

    def check(value: Any) -> str | None:
        if not _is_number(value) or not math.isfinite(value):
            return f"must be {wanted}"
        if low is not None and (value < low or (low_open and value == low)):
            return f"must be {wanted}"
        if high is not None and (value > high or (high_open and value == high)):
            return f"must be {wanted}"
        return None

    return Rule(check)


def boolean() -> Rule:
    return Rule(lambda v: None if isinstance(v, bool) else "must be true or false")


def string(choices: Any = None, *, non_empty: bool = False, what: str = "value") -> Rule:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        if non_empty and not value.strip():
            return "must not be empty"
        if choices is not None and value not in choices:
            options = ", ".join(repr(c) for c in sorted(choices))
            return f"unknown {what} {value!r}; choose one of {options}"
        return None

    return Rule(check)


def list_of(item: Rule, *, required: bool = False) -> Rule:
    def check(value: Any) -> str | None:
        if not isinstance(value, list):
            return "must be a list, e.g. [1, 2]"
        for element in value:
            problem = item.check(element)
            if problem:
                return f"holds {element!r}, which {problem}"
        return None

    return Rule(check, required=required)


RATIO = number(0.0, 1.0, low_open=True, high_open=True)
FRACTION = number(0.0, 1.0, high_open=True)

SCHEMA: dict[str, dict[str, Rule]] = {
    "preset": {
        "name": Rule(string(non_empty=True).check, required=True),
        "description": string(),
        "reference": string(),  # a published-reference table the preset compares with; "" none
    },
    "grid": {
        "datasets": list_of(string(), required=True),
        "attacks": list_of(string(), required=True),
        "defenses": list_of(string(), required=True),
        "ratios": list_of(RATIO, required=True),
        "seeds": list_of(integer(0), required=True),
        "target": integer(0),
        "exclude_target_from_poison": boolean(),
        "clean_fraction": RATIO,
        # attack_ratios: checked by _attack_ratio_problems (two shapes, names to resolve).
    },
    "data": {
        "train_size": integer(0),
        "test_size": integer(0),
        "subset_seed": integer(0),
        "source": string(SOURCE_MODES, what="data source"),
    },
    "train": {
        "epochs": integer(0),
        "batch_size": integer(1),
        "lr": number(0.0, low_open=True),
        "momentum": number(0.0, 1.0),
        "weight_decay": number(0.0),
        "nesterov": boolean(),
        "schedule": string(SCHEDULES, what="schedule"),
        "warmup_fraction": FRACTION,
        "label_smoothing": FRACTION,
        "optimizer": string(("sgd", "adam"), what="optimizer"),
        "schedule_epochs": integer(0),
        "milestones": list_of(integer(0)),
        "gamma": number(0.0, low_open=True),
        "precision": string(PRECISIONS, what="precision"),
        # [train.<dataset>]: a per-dataset budget, checked by _dataset_train_problems.
    },
    "resources": {
        "cpus_per_trial": number(0.0, low_open=True),
        "gpus_per_trial": number(0.0),
        "max_concurrent_trials": integer(0),
        "trial_timeout_s": number(0.0),
        "retries": integer(0),
    },
}
#: Sections whose keys are names: [models] dataset -> model, [attacks.X] / [defenses.Y].
NAMED_SECTIONS = ("models", "attacks", "defenses")


def validate_preset(raw: Mapping[str, Any], where: str = "preset") -> None:
    """Raise one :class:`BenchError` listing every problem in ``raw`` (a parsed TOML preset)."""
    problems: list[str] = []
    known_sections = [*SCHEMA, *NAMED_SECTIONS]
    unknown = sorted(set(raw) - set(known_sections))
    if unknown:
        problems.append(f"unknown section(s) {unknown}; known: {sorted(known_sections)}")
    for section in known_sections:
        table = raw.get(section, {})
        if not isinstance(table, Mapping):
            problems.append(
                f"[{section}] must be a table (a [{section}] section), not {_show(table)}"
            )
        elif section in SCHEMA:
            problems += _section_problems(section, table)
    if isinstance(raw.get("models"), Mapping):
        problems += _model_problems(raw["models"])
    for kind in ("attack", "defense"):
        if isinstance(raw.get(f"{kind}s"), Mapping):
            problems += _component_problems(kind, raw[f"{kind}s"])
    if problems:
        raise BenchError(f"{where}: " + "; ".join(problems))


def _section_problems(section: str, table: Mapping[str, Any]) -> list[str]:
    rules = SCHEMA[section]
    extra = {"attack_ratios", "left_out"} if section == "grid" else set()
    if section == "train":  # [train.gtsrb]: that dataset's budget
        extra = {k for k, v in table.items() if isinstance(v, Mapping)}
    problems = []
    unknown = sorted(set(table) - set(rules) - extra)
    if unknown:
        known = sorted({*rules, *extra})
        problems.append(f"unknown key(s) {unknown} in [{section}]; known: {known}")
    for key, rule in rules.items():
        if key not in table:
            if rule.required:
                hint = "a name" if section == "preset" else repr(key)
                problems.append(f"[{section}] needs {hint}")
            continue
        problem = rule.check(table[key])
        if problem:
            problems.append(f"[{section}] {key} = {_show(table[key])}: {problem}")
    if section == "grid" and "attack_ratios" in table:
        problems += _attack_ratio_problems(table["attack_ratios"])
    if section == "grid" and "left_out" in table:
        problems += _left_out_problems(table["left_out"])
    for dataset in sorted(extra) if section == "train" else ():
        problems += _dataset_train_problems(dataset, table[dataset])
    return problems


def _dataset_train_problems(dataset: str, table: Mapping[str, Any]) -> list[str]:
    """``[train.<dataset>]``: the keys of [train] (precision excepted) for one dataset."""
    where = f"[train.{dataset}]"
    if dataset not in DATASETS:
        return [f"{where}: {unknown_name_error('dataset', dataset, DATASETS)}"]
    rules = {k: r for k, r in SCHEMA["train"].items() if k != "precision"}
    problems = []
    unknown = sorted(set(table) - set(rules))
    if unknown:
        problems.append(f"unknown key(s) {unknown} in {where}; known: {sorted(rules)}")
    for key, value in table.items():
        problem = rules[key].check(value) if key in rules else None
        if problem:
            problems.append(f"{where} {key} = {_show(value)}: {problem}")
    return problems


def _left_out_problems(value: Any) -> list[str]:
    """``[grid.left_out]``: ``name = "reason"`` for an attack or defense the grid names but runs
    only when asked for explicitly (the reason goes on the leaderboard)."""
    where = "[grid.left_out]"
    if not isinstance(value, Mapping):
        return [f'{where} must be a table of name = "reason"']
    known = {**registry.entries("attack"), **registry.entries("defense")}
    problems = []
    for name, reason in value.items():
        if name not in known:
            problems.append(f"{where}: {unknown_name_error('attack or defense', name, known)}")
        elif not isinstance(reason, str) or not reason.strip():
            problems.append(f"{where} {name} = {_show(reason)}: must be a non-empty reason")
    return problems


def _attack_ratio_problems(value: Any) -> list[str]:
    """``[grid.attack_ratios]``: ``attack = [ratios]`` for every dataset, or a table per
    dataset (``[grid.attack_ratios.gtsrb] sig = [0.005]``)."""
    where = "[grid.attack_ratios]"
    if not isinstance(value, Mapping):
        return [f"{where} must be a table of attack = [ratios]"]
    problems = []
    attacks = registry.entries("attack")
    for key, item in value.items():
        if isinstance(item, Mapping):
            if key not in DATASETS:
                problems.append(f"{where}.{key}: {unknown_name_error('dataset', key, DATASETS)}")
                continue
            for attack, ratios in item.items():
                problems += _ratio_list_problems(
                    f"[grid.attack_ratios.{key}]", attack, ratios, attacks
                )
        else:
            problems += _ratio_list_problems(where, key, item, attacks)
    return problems


def _ratio_list_problems(where: str, attack: str, ratios: Any, attacks: Mapping) -> list[str]:
    if attack not in attacks:
        return [f"{where}: {unknown_name_error('attack', attack, attacks)}"]
    rule = list_of(RATIO)
    problem = rule.check(ratios) or (None if ratios else "must not be empty")
    return [f"{where} {attack} = {_show(ratios)}: {problem}"] if problem else []


def _model_problems(table: Mapping[str, Any]) -> list[str]:
    problems = []
    for key, value in table.items():
        if key != "default" and key not in DATASETS:
            message = unknown_name_error("dataset", key, DATASETS)
            problems.append(f"[models] {key}: {message} (or 'default')")
        elif not isinstance(value, str):
            problems.append(f"[models] {key} = {_show(value)}: must be a model name (a string)")
        elif value not in model_names():
            problems.append(f"[models] {key}: {unknown_name_error('model', value, model_names())}")
    return problems


def _component_problems(kind: str, table: Mapping[str, Any]) -> list[str]:
    """[attacks.X] / [defenses.Y]: X must be registered, the section a table of parameters the
    component accepts (its Params validate types and ranges)."""
    section = f"{kind}s"
    try:
        registered = registry.entries(kind)
    except BenchError as exc:
        return [str(exc)]
    problems = []
    for name, params in table.items():
        if name not in registered:
            problems.append(f"[{section}.{name}]: {unknown_name_error(kind, name, registered)}")
            continue
        if not isinstance(params, Mapping):
            problems.append(
                f"[{section}] {name} = {_show(params)}: [{section}.{name}] must be a table of "
                f"parameters, e.g. [{section}.{name}] with key = value lines"
            )
            continue
        bad = [k for k, v in params.items() if _is_number(v) and not math.isfinite(v)]
        if bad:
            problems.append(f"[{section}.{name}] {', '.join(bad)} must be finite numbers")
            continue
        try:
            registry.create(kind, name, dict(params))
        except BenchError as exc:
            problems.append(f"[{section}.{name}] {exc}")
    return problems


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
