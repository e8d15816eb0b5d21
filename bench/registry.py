"""One registry for attacks and defenses, discovered through entry points (like lm-eval's tasks).

Built-ins register through the same ``bench.attacks`` / ``bench.defenses`` groups as plugins in
``pyproject.toml``. Names are listed without importing anything; a component is imported only
when used, so one broken plugin cannot break the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any

from bench.checks import check_component_class
from bench.errors import BenchError, unknown_name_error
from bench.params import Configurable

GROUPS = {"attack": "bench.attacks", "defense": "bench.defenses"}


@dataclass(frozen=True)
class Entry:
    """A registered component: where it comes from, before it is imported."""

    kind: str
    name: str
    target: str  # "module:Class"
    package: str
    version: str
    entry_point: metadata.EntryPoint

    @property
    def builtin(self) -> bool:
        return self.package == "backdoor-leaderboard"

    def load(self) -> type[Configurable]:
        from attacks.base import Attack
        from defenses.base import Defense

        base = {"attack": Attack, "defense": Defense}[self.kind]
        where = f"{self.kind} {self.name!r} from package {self.package} ({self.target})"
        try:
            obj = self.entry_point.load()
        except Exception as exc:
            raise BenchError(f"{where} failed to import: {type(exc).__name__}: {exc}") from exc
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise BenchError(f"{where} is not a subclass of {base.__module__}.{base.__name__}")
        check_component_class(obj, self.kind, where)
        if obj.name != self.name:
            raise BenchError(
                f"{where} declares name {obj.name!r}; the entry point registers {self.name!r}"
            )
        return obj


def entries(kind: str) -> dict[str, Entry]:
    """All registered components of ``kind`` by name; a name claimed twice is an error."""
    found: dict[str, Entry] = {}
    for ep in metadata.entry_points(group=GROUPS[kind]):
        dist = ep.dist
        package = dist.metadata["Name"] if dist is not None else "unknown"
        version = dist.version if dist is not None else "unknown"
        entry = Entry(kind, ep.name, ep.value, package, version, ep)
        other = found.get(ep.name)
        if other is not None and (other.package, other.target) != (package, ep.value):
            raise BenchError(
                f"{kind} name {ep.name!r} is registered twice: by {other.package} "
                f"({other.target}) and by {package} ({ep.value}). Uninstall one or rename it."
            )
        found[ep.name] = entry
    return found


def get_entry(kind: str, name: str) -> Entry:
    registered = entries(kind)
    if name not in registered:
        raise unknown_name_error(kind, name, registered)
    return registered[name]


def create(kind: str, name: str, params: dict[str, Any] | None = None) -> Any:
    """An attack or defense instance with validated parameters."""
    return get_entry(kind, name).load()(**(params or {}))
