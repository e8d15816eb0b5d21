"""Where a grid's method settings come from: for each defense (and each attack the preset sets),
the source the preset declares (``[preset.sources]``) and the values it sets apart from the
method's own defaults. ``bench run --dry-run`` prints it, so a table's settings are never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bench.grid import registry
from bench.grid.shapes import Preset
from bench.spec import TrialSpec


def settings_lines(preset: Preset, specs: Iterable[TrialSpec]) -> list[str]:
    """One line per defense of the grid, and per attack the preset sets or names a source for."""
    specs = list(specs)
    lines = [f"settings of preset {preset.name}:"]
    for kind in ("defense", "attack"):
        params: dict[str, dict[str, Any]] = {}
        for spec in specs:
            name = getattr(spec, kind)
            params.setdefault(name, dict(getattr(spec, f"{kind}_params")))
        for name, resolved in sorted(params.items()):
            changed = _changed(kind, name, resolved)
            source = preset.sources.get(name)
            if kind == "attack" and not (changed or source):
                continue  # an attack at its defaults (BackdoorBench's): nothing to say
            lines.append(f"  {kind} {name}: {source or _default_source(kind, name, changed)}")
            if changed:
                shown = ", ".join(f"{k}={v!r}" for k, v in sorted(changed.items()))
                lines.append(f"    set by the preset: {shown}")
    return lines


def _changed(kind: str, name: str, resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved parameters that differ from the method's defaults."""
    defaults = registry.create(kind, name, {}).describe()
    return {k: v for k, v in resolved.items() if _plain(defaults.get(k)) != v}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _default_source(kind: str, name: str, changed: dict[str, Any]) -> str:
    cls = registry.get_entry(kind, name).load()
    if kind == "attack":
        own = "BackdoorBench's settings (the attacks' defaults)"
    elif getattr(cls, "reconstructed", False):
        own = "reconstructed from the paper (no official code, no published reference run)"
    elif name == "none":
        own = "no defense"
    else:
        own = "the official code's defaults"
    return f"{own}, with this preset's budget" if changed else own
