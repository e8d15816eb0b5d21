"""The `paper` preset resolves to BackdoorBench's settings (bench/reference/backdoorbench-settings.
toml, read from its code and configs at a pinned commit), field by field, on CIFAR-10 and GTSRB;
a value that differs must be one DEVIATIONS.md lists with a reason (``LISTED`` names the phrase
that row holds). The `paper-official` preset keeps the official defaults."""

from __future__ import annotations

import dataclasses
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bench.grid import registry
from bench.grid.expand import _resolved
from bench.grid.presets import load_preset
from defenses.abl import ISOLATION_LR
from defenses.dbd import LAMBDA_U

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = tomllib.loads((ROOT / "bench/reference/backdoorbench-settings.toml").read_text())
DEVIATIONS = (ROOT / "DEVIATIONS.md").read_text()

#: (method, key) whose paper-preset value differs from BackdoorBench's -> a phrase of the
#: DEVIATIONS.md row that says so and why.
LISTED: dict[tuple[str, str], str] = {
    # BackdoorBench trains in fp32 (amp: False); `auto` is bf16 on GPUs
    ("prototype", "precision"): "bf16 autocast where the hardware has native bf16",
}

#: Our parameters whose 0 means "the dataset's reference value", resolved as the method does.
DATASET_DEFAULTS = {
    ("abl", "isolation_lr"): lambda dataset: ISOLATION_LR.get(dataset, 0.1),
    ("dbd", "lambda_u"): lambda dataset: LAMBDA_U.get(dataset, 6.0),
}


def _ours(preset, kind: str, method: str, dataset: str) -> dict[str, Any]:
    if method == "prototype":
        train = dataclasses.asdict(preset.train_for(dataset))
        return {**train, "precision": preset.precision}
    params = _resolved(
        kind, method, preset.attack_params if kind == "attack" else preset.defense_params
    )
    for (name, key), default in DATASET_DEFAULTS.items():
        if name == method and params.get(key) == 0:
            params[key] = default(dataset)
    return params


def _expected(entry: dict[str, Any]) -> Any:
    return entry.get("ours_value", entry["value"])


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(theirs, (int, float)) and not isinstance(theirs, bool):
        return isinstance(ours, (int, float)) and abs(ours - theirs) <= 1e-9 * max(1, abs(theirs))
    if isinstance(theirs, list):
        return list(ours) == theirs
    return ours == theirs


def compared_fields(kind: str, preset_name: str = "paper"):
    """(method, dataset, key, ours, theirs) for every setting with a parameter of ours."""
    preset = load_preset(preset_name)
    table = SETTINGS[f"{kind}s"]
    for method, per_dataset in sorted(table.items()):
        if method != "prototype" and method not in registry.entries(kind):
            continue  # a method the harness does not have (yet)
        for dataset, entries in sorted(per_dataset.items()):
            ours = _ours(preset, kind, method, dataset)
            for key, entry in sorted(entries.items()):
                pointer = entry.get("ours", "")
                if method == "prototype" and pointer.startswith("[train] "):
                    key = pointer.removeprefix("[train] ")
                elif pointer:
                    continue  # no parameter of ours, or one the preset's grid holds
                assert key in ours, f"{method}.{dataset}: {key!r} names no parameter of ours"
                yield method, dataset, key, ours[key], _expected(entry)


@pytest.mark.parametrize("kind", ["defense", "attack"])
def test_the_paper_preset_is_backdoorbenchs_settings_field_by_field(kind):
    differing = []
    checked = 0
    for method, dataset, key, ours, theirs in compared_fields(kind):
        checked += 1
        if _same(ours, theirs):
            continue
        phrase = LISTED.get((method, key))
        if phrase is None:
            differing.append(f"{method}.{dataset}.{key}: ours {ours!r}, BackdoorBench {theirs!r}")
        else:
            assert phrase in DEVIATIONS, (
                f"{method}.{key} differs; DEVIATIONS.md must say {phrase!r}"
            )
    assert checked > (60 if kind == "defense" else 80)
    assert not differing, "not in BackdoorBench's settings and not listed:\n" + "\n".join(differing)


def test_listed_deviations_still_differ():
    """A listed difference that no longer differs is a stale row of DEVIATIONS.md."""
    seen = {
        (method, key)
        for kind in ("defense", "attack")
        for method, _, key, ours, theirs in compared_fields(kind)
        if not _same(ours, theirs)
    }
    assert set(LISTED) <= seen, f"listed but equal now: {sorted(set(LISTED) - seen)}"


def test_a_changed_setting_fails_the_check(monkeypatch):
    """The check is not vacuous: moving one of the preset's values off BackdoorBench's fails."""
    real = load_preset("paper")
    ibau = {**real.defense_params["ibau"], "outer_lr": 1e-3}
    changed = dataclasses.replace(real, defense_params={**real.defense_params, "ibau": ibau})
    monkeypatch.setattr(sys.modules[__name__], "load_preset", lambda _name: changed)
    with pytest.raises(AssertionError, match=r"ibau\.cifar10\.outer_lr"):
        test_the_paper_preset_is_backdoorbenchs_settings_field_by_field("defense")


def test_paper_official_keeps_every_defense_at_its_official_defaults():
    official = load_preset("paper-official")
    paper = load_preset("paper")
    assert official.reference == "" and paper.reference == "backdoorbench-preactresnet18"
    assert (official.grid, official.train, official.models) == (
        paper.grid,
        paper.train,
        paper.models,
    )
    for defense in ("abl", "ibau", "nab", "dlp"):
        defaults = json.loads(json.dumps(registry.create("defense", defense, {}).describe()))
        assert _resolved("defense", defense, official.defense_params) == defaults
    assert official.defense_params["dbd"]["semi_epochs"] == 190  # the official config
    assert paper.defense_params["dbd"]["semi_epochs"] == 100  # BackdoorBench's epochs
