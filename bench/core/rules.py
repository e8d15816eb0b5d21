"""Rules for plain-data settings, declared once, on the dataclass field each governs.

A preset is plain TOML data, and its sections become dataclasses (:class:`~bench.core.train.
TrainConfig`, :class:`~bench.spec.DataBudget`, :class:`~bench.spec.Resources`,
:class:`~bench.grid.presets.Grid`). Each field carries its :class:`Rule` in its metadata
(:func:`ruled`), so the preset schema (:mod:`bench.grid.preset_schema`), the dataclass's own
construction check and grid expansion all read one declaration per key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The field-metadata key holding a field's rule.
RULE = "bench.rule"


@dataclass(frozen=True)
class Rule:
    """What one key must hold: ``check`` returns None, or what is wrong with a value."""

    check: Callable[[Any], str | None]
    required: bool = False


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low: int | None = None) -> Rule:
    def check(value: Any) -> str | None:
        if not is_int(value):
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
        if not is_number(value) or not math.isfinite(value):
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
    """A string; with ``choices`` (a collection, or a callable returning one), one of them."""

    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        if non_empty and not value.strip():
            return "must not be empty"
        allowed = choices() if callable(choices) else choices  # a callable: defined later
        if allowed is not None and value not in allowed:
            options = ", ".join(repr(c) for c in sorted(allowed))
            return f"unknown {what} {value!r}; choose one of {options}"
        return None

    return Rule(check)


def list_of(item: Rule, *, required: bool = False) -> Rule:
    def check(value: Any) -> str | None:
        if not isinstance(value, (list, tuple)):
            return "must be a list, e.g. [1, 2]"
        for element in value:
            problem = item.check(element)
            if problem:
                return f"holds {element!r}, which {problem}"
        return None

    return Rule(check, required=required)


RATIO = number(0.0, 1.0, low_open=True, high_open=True)
FRACTION = number(0.0, 1.0, high_open=True)


def ruled(rule: Rule, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field governed by ``rule`` (``x: int = ruled(integer(0), 10)``)."""
    return dataclasses.field(default=default, metadata={RULE: rule}, **kwargs)


def rules_of(cls: type) -> dict[str, Rule]:
    """The rules a dataclass declares, by field name (fields without one are checked apart)."""
    return {f.name: f.metadata[RULE] for f in dataclasses.fields(cls) if RULE in f.metadata}


def problems_of(obj: Any) -> list[str]:
    """What is wrong with a dataclass instance's ruled fields: "name = value: problem"."""
    problems = []
    for name, rule in rules_of(type(obj)).items():
        value = getattr(obj, name)
        problem = rule.check(value)
        if problem:
            problems.append(f"{name} = {value!r}: {problem}")
    return problems
