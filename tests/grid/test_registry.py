"""The registry finds the built-ins from a source checkout that was never installed."""

from __future__ import annotations

from importlib import metadata

from bench.grid import registry


def test_an_uninstalled_checkout_still_registers_the_builtins(monkeypatch):
    """A machine without pip's build tools runs `python -m bench.cli` from the checkout: the
    built-ins come from pyproject.toml, attributed to the harness's own package."""

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(registry.metadata, "distribution", not_installed)
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [])
    attacks, defenses = registry.entries("attack"), registry.entries("defense")
    assert {"badnets", "wanet", "ssba"} <= set(attacks) and {"none", "abl", "dbd"} <= set(defenses)
    entry = defenses["abl"]
    assert entry.builtin and entry.target == "defenses.abl:ABL"
    assert entry.load().name == "abl"


def test_an_installed_harness_lists_each_builtin_once():
    names = [e.name for e in registry.entries("attack").values()]
    assert len(names) == len(set(names)) and "badnets" in names
