"""One registry for attacks and defenses, discovered through entry points (like lm-eval's tasks).

Built-ins register through the same ``bench.attacks`` / ``bench.defenses`` groups as plugins in
``pyproject.toml``. Names are listed without importing anything; a component is imported only
when used, so one broken plugin cannot break the others.
"""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from bench.core.params import Configurable
from bench.core.settings import PROJECT_ROOT
from bench.errors import BenchError, unknown_name_error
from bench.grid.checks import check_component_class
from bench.schema import BUILTIN_PACKAGE

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
        return self.package == BUILTIN_PACKAGE

    def load(self) -> type[Configurable]:
        from attacks.base import Attack
        from bench.api import Defense

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


def _installed(group: str) -> list[tuple[metadata.EntryPoint, str, str]]:
    """(entry point, package, version) of every installed registration in ``group``."""
    out = []
    for ep in metadata.entry_points(group=group):
        dist = ep.dist
        package = dist.metadata["Name"] if dist is not None else "unknown"
        out.append((ep, package, dist.version if dist is not None else "unknown"))
    return out


def _source_tree(group: str) -> list[tuple[metadata.EntryPoint, str, str]]:
    """The built-ins as ``pyproject.toml`` declares them, when the harness runs from a checkout
    that was never installed (a machine without pip's build tools: ``python -m bench.cli``)."""
    try:
        metadata.distribution(BUILTIN_PACKAGE)
        return []  # installed: its entry points are already listed
    except metadata.PackageNotFoundError:
        pass
    pyproject = PROJECT_ROOT / "pyproject.toml"
    if not pyproject.is_file():
        return []
    project = tomllib.loads(pyproject.read_text())["project"]
    declared = project.get("entry-points", {}).get(group, {})
    version = str(project.get("version", "unknown"))
    return [
        (metadata.EntryPoint(name, value, group), BUILTIN_PACKAGE, version)
        for name, value in declared.items()
    ]


def entries(kind: str) -> dict[str, Entry]:
    """All registered components of ``kind`` by name; a name claimed twice is an error.

    Scanning the installed distributions' metadata takes about 50 ms, and a grid asks per
    trial, so the answer is kept while the environment it came from is unchanged: the import
    path's directories (installing or removing a package changes its directory), the checkout's
    ``pyproject.toml`` and the metadata functions themselves (tests replace them)."""
    key = (kind, _environment_stamp())
    cached = _ENTRIES.get(key)
    if cached is None:
        cached = _ENTRIES[key] = _scan(kind)
        while len(_ENTRIES) > 8:
            _ENTRIES.pop(next(iter(_ENTRIES)))
    return dict(cached)


_ENTRIES: dict[tuple, dict[str, Entry]] = {}


def _environment_stamp() -> tuple:
    def mtime(path: str) -> int | None:
        try:
            return os.stat(path or ".").st_mtime_ns
        except OSError:
            return None

    paths = tuple((p, mtime(p)) for p in sys.path)
    pyproject = mtime(str(PROJECT_ROOT / "pyproject.toml"))
    return (paths, pyproject, id(metadata.entry_points), id(metadata.distribution))


def _scan(kind: str) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    group = GROUPS[kind]
    for ep, package, version in [*_source_tree(group), *_installed(group)]:
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
