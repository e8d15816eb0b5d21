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
from collections.abc import Mapping
from typing import Any

from bench.core.models import model_names
from bench.core.precision import PRECISIONS
from bench.core.rules import RATIO, Rule, is_number, list_of, rules_of, string
from bench.core.train import TrainConfig
from bench.data import DATASETS
from bench.errors import BenchError, unknown_name_error
from bench.grid import registry
from bench.grid.shapes import Grid
from bench.spec import DataBudget, Resources

#: Every section's keys and their rules, derived from the dataclasses the sections become (one
#: declaration per key: :func:`bench.core.rules.ruled` on the field).
SCHEMA: dict[str, dict[str, Rule]] = {
    "preset": {
        "name": Rule(string(non_empty=True).check, required=True),
        "description": string(),
        "reference": string(),  # a published-reference table the preset compares with; "" none
        # where each method's settings come from, by method name (bench run --dry-run prints it)
        "sources": Rule(lambda v: _string_table_problem(v)),
    },
    # [grid.attack_ratios] (two shapes, names to resolve) and [grid.left_out] are checked apart.
    "grid": rules_of(Grid),
    "data": rules_of(DataBudget),
    # [train.<dataset>]: a per-dataset budget, checked by _dataset_train_problems.
    "train": {**rules_of(TrainConfig), "precision": string(PRECISIONS, what="precision")},
    "resources": rules_of(Resources),
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


def _string_table_problem(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return 'must be a table of method name = "where its settings come from"'
    bad = [k for k, v in value.items() if not isinstance(v, str)]
    return f"must hold strings; {bad} do not" if bad else None


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
        bad = [k for k, v in params.items() if is_number(v) and not math.isfinite(v)]
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
