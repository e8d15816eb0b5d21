"""Validated hyperparameters shared by attacks and defenses (one mechanism for both)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from bench.errors import BenchError


class Configurable:
    """Base for registry components: a ``name`` and a frozen ``Params`` dataclass of defaults.

    ``Component(**overrides)`` validates the overrides: unknown keys, wrong types and values that
    ``Params.__post_init__`` rejects become a :class:`BenchError` naming the component.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "component"

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, **overrides: Any):
        self.params = build_params(type(self), overrides)

    def describe(self) -> dict[str, Any]:
        """The parameters as the trial id and the row hold them: every field, except one
        declared with :func:`added_later` that holds its default."""
        values = dataclasses.asdict(self.params)
        for f in dataclasses.fields(self.params):
            if f.metadata.get(ADDED_LATER) and values[f.name] == f.default:
                del values[f.name]
        return values


#: Field-metadata key of a parameter declared with :func:`added_later`.
ADDED_LATER = "bench.added_later"


def added_later(default: Any) -> Any:
    """A parameter added to a method after results were recorded, whose ``default`` keeps the
    method's earlier behaviour: absent from the trial id at that default, so the recorded rows
    stay valid (as a revision is absent at 1); any other value is another trial. A parameter
    that changes what the defaults compute is no such case: bump the revision instead."""
    return dataclasses.field(default=default, metadata={ADDED_LATER: True})


def require_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """For ``Params.__post_init__``: a string parameter must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be {' or '.join(repr(c) for c in choices)}, not {value!r}")


def build_params(cls: type[Configurable], overrides: dict[str, Any]) -> Any:
    params_cls = cls.Params
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    label = f"{cls.kind} {cls.name!r}"
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "(none)"
        raise BenchError(f"{label}: unknown parameter(s) {unknown}. Known parameters: {known}.")
    for key, value in overrides.items():
        default = fields[key].default
        if default is not dataclasses.MISSING and not _same_kind(default, value):
            raise BenchError(
                f"{label}: parameter {key!r} must be {type(default).__name__}, "
                f"got {value!r} ({type(value).__name__})."
            )
    try:
        return params_cls(**overrides)
    except (ValueError, TypeError) as exc:
        raise BenchError(f"{label}: invalid parameters: {exc}") from exc


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return default is None or isinstance(value, type(default))
