"""Presets, grid expansion and trial-spec hashing."""

import dataclasses

import pytest

from bench.errors import BenchError
from bench.grid.expand import expand_grid
from bench.grid.presets import builtin_presets, load_preset, parse_preset, with_overrides
from bench.spec import TrialSpec


def test_builtin_presets_load_and_expand():
    assert {"smoke", "quick", "paper"} <= set(builtin_presets())
    for name in ("smoke", "quick"):
        specs = expand_grid(load_preset(name))
        assert specs and all(s.preset == name for s in specs)
        assert len({s.trial_id for s in specs}) == len(specs)


def test_grid_is_the_product_of_its_axes():
    preset = with_overrides(
        load_preset("smoke"), attacks=["badnets", "blended"], ratios=[0.1, 0.05], seeds=[0, 1, 2]
    )
    specs = expand_grid(preset)
    assert len(specs) == 2 * 2 * 3
    assert {(s.attack, s.ratio, s.seed) for s in specs} == {
        (a, r, s) for a in ("badnets", "blended") for r in (0.1, 0.05) for s in (0, 1, 2)
    }


def test_trial_id_is_stable_and_sensitive():
    spec = expand_grid(load_preset("smoke"))[0]
    again = expand_grid(load_preset("smoke"))[0]
    assert spec.trial_id == again.trial_id
    assert TrialSpec.from_dict(spec.to_dict()).trial_id == spec.trial_id
    # Parameter order does not matter; a changed value does.
    reordered = dataclasses.replace(spec, attack_params=dict(reversed(spec.attack_params.items())))
    assert reordered.trial_id == spec.trial_id
    for change in (
        {"seed": 1},
        {"ratio": 0.05},
        {"attack_params": {"size": 4, "value": 255}},
        {"train": {**spec.train, "epochs": 2}},
    ):
        assert dataclasses.replace(spec, **change).trial_id != spec.trial_id


def test_a_new_defense_revision_is_another_trial(monkeypatch):
    """Changed defense code (a bumped ``Defense.revision``) makes new trial ids, so a resumed
    grid reruns that defense's rows instead of answering "done" from older code's."""
    from bench.grid import registry

    preset = with_overrides(load_preset("smoke"), attacks=["badnets"], defenses=["ibau", "none"])
    before = {s.defense: s for s in expand_grid(preset)}
    assert "defense_revision" not in before["ibau"].to_dict() or before["ibau"].defense_revision > 1
    ibau = registry.get_entry("defense", "ibau").load()
    monkeypatch.setattr(ibau, "revision", ibau.revision + 1)
    after = {s.defense: s for s in expand_grid(preset)}
    assert after["ibau"].defense_revision == ibau.revision
    assert after["ibau"].trial_id != before["ibau"].trial_id
    assert after["none"].trial_id == before["none"].trial_id  # other defenses keep their rows
    rebuilt = TrialSpec.from_dict(after["ibau"].to_dict())
    assert rebuilt.trial_id == after["ibau"].trial_id


def test_resolved_params_include_defaults():
    spec = expand_grid(with_overrides(load_preset("smoke"), attacks=["blended"]))[0]
    assert spec.attack_params == {"alpha": 0.2, "key_seed": 0}


def test_unknown_names_suggest_the_closest():
    with pytest.raises(BenchError, match="Did you mean 'badnets'"):
        expand_grid(with_overrides(load_preset("smoke"), attacks=["badnet"]))
    with pytest.raises(BenchError, match="unknown defense 'nonee'"):
        expand_grid(with_overrides(load_preset("smoke"), defenses=["nonee"]))
    with pytest.raises(BenchError, match="unknown dataset 'cifar100'"):
        expand_grid(with_overrides(load_preset("smoke"), datasets=["cifar100"]))
    with pytest.raises(BenchError, match="unknown preset 'quik'"):
        load_preset("quik")


def test_bad_grid_values_are_rejected():
    smoke = load_preset("smoke")
    with pytest.raises(BenchError, match=r"ratio must be in \(0, 1\)"):
        expand_grid(with_overrides(smoke, ratios=[1.5]))
    bad_target = dataclasses.replace(smoke, grid=dataclasses.replace(smoke.grid, target=10))
    with pytest.raises(BenchError, match="target class 10 is out of range for cifar10"):
        expand_grid(bad_target)


def test_preset_files_are_validated(tmp_path):
    with pytest.raises(BenchError, match=r"unknown key\(s\) \['epoch'\] in \[train\]"):
        parse_preset({"preset": {"name": "x"}, "train": {"epoch": 3}})
    with pytest.raises(BenchError, match="needs 'attacks'"):
        parse_preset({"preset": {"name": "x"}, "grid": {"datasets": ["cifar10"]}})
    broken = tmp_path / "broken.toml"
    broken.write_text("[grid\n")
    with pytest.raises(BenchError, match="cannot read preset file"):
        load_preset(broken)
    with pytest.raises(BenchError, match="does not exist"):
        load_preset(tmp_path / "missing.toml")


def test_planning_a_grid_costs_per_cell_work_once_not_per_trial(monkeypatch):
    """Before: every trial re-scanned the installed packages' metadata (about 50 ms each) and
    re-serialised its spec for each id: a dry run of 2,000 seeds took 77 s and one of 20,000
    was killed at 600 s. Now a 120,000-trial dry run of the quick preset takes about 24 s (most
    of it start-up, the speed probe and printing)."""
    from bench.grid import registry
    from bench.run.plan import plan_grid

    scans = []
    real_scan = registry._scan
    monkeypatch.setattr(registry, "_scan", lambda kind: scans.append(kind) or real_scan(kind))
    registry._ENTRIES.clear()
    preset = with_overrides(load_preset("quick"), seeds=range(40))
    specs = expand_grid(preset)
    plan = plan_grid(specs, preset.grid.left_out)
    assert len(specs) == 11 * 12 * 40 and len(plan.runnable) + len(plan.skipped) == len(specs)
    assert sorted(scans) == ["attack", "defense"]  # once per kind, not per trial
    spec = specs[0]
    first = spec.canonical()
    assert spec.canonical() is first  # serialised once
    assert TrialSpec.from_dict(spec.to_dict()).trial_id == spec.trial_id
    assert dataclasses.replace(spec, seed=99).trial_id != spec.trial_id


def test_a_preset_extends_another_section_by_section(tmp_path):
    """``[preset] extends``: the base's sections, each key replaced by the extending file's; a
    method table named again (even empty) replaces the base's wholesale; [preset] is not
    inherited (an extending preset follows no reference unless it says so)."""
    (tmp_path / "base.toml").write_text(
        '[preset]\nname = "base"\nreference = "backdoorbench-preactresnet18"\n'
        '[preset.sources]\nabl = "somewhere"\n'
        '[grid]\ndatasets = ["cifar10"]\nattacks = ["badnets"]\ndefenses = ["abl"]\n'
        "ratios = [0.1]\nseeds = [0]\n[train]\nepochs = 3\nlr = 0.05\n"
        "[defenses.abl]\nisolation_lr = 0.01\nunlearning_epochs = 20\n"
    )
    (tmp_path / "child.toml").write_text(
        '[preset]\nname = "child"\nextends = "base.toml"\n[train]\nepochs = 5\n[defenses.abl]\n'
    )
    base, child = load_preset(tmp_path / "base.toml"), load_preset(tmp_path / "child.toml")
    assert (child.train.epochs, child.train.lr) == (5, 0.05)
    assert child.grid == base.grid
    assert base.defense_params["abl"] == {"isolation_lr": 0.01, "unlearning_epochs": 20}
    assert child.defense_params["abl"] == {}
    assert (child.reference, child.sources) == ("", {})
    (tmp_path / "loop.toml").write_text('[preset]\nname = "loop"\nextends = "loop.toml"\n')
    with pytest.raises(BenchError, match="cycle"):
        load_preset(tmp_path / "loop.toml")
