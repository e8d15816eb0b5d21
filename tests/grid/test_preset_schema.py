"""The preset schema refuses bad presets before anything runs (case 7 of issue 22)."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.errors import BenchError
from tests.hostile_support import (
    PRESET_CASES,
)


@pytest.mark.parametrize(
    ("case", "text", "message"), PRESET_CASES, ids=[c[0] for c in PRESET_CASES]
)
def test_case7_preset_schema_refuses_before_anything_runs(case, text, message, tmp_path, capsys):
    """Before: tracebacks, an ok row with ASR 0 (target 0.5), trials that all errored (epochs
    1.5), or silent acceptance (train_size -49000, [defenses.ablx])."""
    preset = tmp_path / "preset.toml"
    preset.write_text(text)
    results = tmp_path / "results"
    assert main(["run", "--preset", str(preset), "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not results.exists(), "nothing may start for a bad preset"


def test_case7_schema_accepts_the_new_keys_and_checks_their_types():
    from bench.grid.preset_schema import validate_preset

    good = {
        "preset": {"name": "p", "reference": "backdoorbench-cifar10"},
        "grid": {
            "datasets": ["cifar10", "gtsrb"],
            "attacks": ["sig"],
            "defenses": ["none"],
            "ratios": [0.1],
            "seeds": [0],
            "attack_ratios": {"sig": [0.05], "gtsrb": {"sig": [0.005]}},
        },
        "train": {"precision": "bf16"},
        "data": {"source": "official"},
    }
    validate_preset(good)
    bad = {
        **good,
        "preset": {"name": "p", "reference": 3},
        "train": {"precision": "fp16"},
        "data": {"source": "web"},
        "grid": {**good["grid"], "attack_ratios": {"gtsrb": {"sigg": [0.005]}, "lc": [2.0]}},
    }
    with pytest.raises(BenchError) as err:
        validate_preset(bad, where="p.toml")
    message = str(err.value)
    for fragment in (
        "[preset] reference = 3: must be a string",
        "unknown precision 'fp16'",
        "unknown data source 'web'",
        "[grid.attack_ratios.gtsrb]: unknown attack 'sigg'. Did you mean 'sig'?",
        "[grid.attack_ratios] lc = [2.0]: holds 2.0",
    ):
        assert fragment in message, message


def test_case7_schema_covers_every_dataclass_field():
    """A new preset key (a new field of Grid, DataBudget, TrainConfig or Resources) must get a
    rule here, or the schema would refuse it as unknown."""
    import dataclasses

    from bench.core.train import TrainConfig
    from bench.grid.preset_schema import SCHEMA
    from bench.grid.presets import Grid
    from bench.spec import DataBudget, Resources

    for section, cls in (
        ("grid", Grid),
        ("data", DataBudget),
        ("train", TrainConfig),
        ("resources", Resources),
    ):
        fields = {f.name for f in dataclasses.fields(cls)}
        # [grid.attack_ratios] (two shapes) and [grid.left_out] (a table) have their own checks
        fields -= {"attack_ratios", "dataset_attack_ratios", "left_out"}
        assert fields <= set(SCHEMA[section]), (section, fields - set(SCHEMA[section]))


def test_one_declaration_per_key_drives_the_schema_and_the_dataclass():
    """A key's rule is written once, on its dataclass field: the preset schema refuses a TOML
    value with the same words the dataclass refuses it with when code builds it."""
    import dataclasses

    from bench.core.rules import RULE, rules_of
    from bench.core.train import TrainConfig
    from bench.grid.preset_schema import SCHEMA, validate_preset
    from bench.grid.shapes import Grid
    from bench.spec import DataBudget, Resources

    for section, cls in (("grid", Grid), ("data", DataBudget), ("resources", Resources)):
        assert SCHEMA[section] == rules_of(cls), section
    assert {k: v for k, v in SCHEMA["train"].items() if k != "precision"} == rules_of(TrainConfig)
    momentum = next(f for f in dataclasses.fields(TrainConfig) if f.name == "momentum")
    problem = momentum.metadata[RULE].check(1.5)
    assert problem == "must be a number in [0, 1]"
    with pytest.raises(ValueError, match=r"momentum = 1\.5: must be a number in \[0, 1\]"):
        TrainConfig(momentum=1.5)
    with pytest.raises(BenchError, match=r"\[train\] momentum = 1\.5: must be a number in \[0, 1"):
        validate_preset({"preset": {"name": "x"}, "train": {"momentum": 1.5}})
