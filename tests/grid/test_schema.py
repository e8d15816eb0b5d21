"""The row schema: the one place column names are written, complete rows, and old tables upgraded
on read so readers need no guards."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench import schema
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.schema import Col
from bench.spec import TrialSpec
from bench.store import ResultsStore
from bench.trial.pipeline import run_trial_safely

BENCH = Path(__file__).resolve().parents[2] / "bench"

#: String literals equal to a column name that are not column names, as (file, literal): the
#: most occurrences allowed (None: any; these files never touch result rows). Anything else
#: must name the column through bench.schema.Col.
NOT_COLUMNS: dict[tuple[str, str], int | None] = {
    # Plugin kinds of the registry ("attack", "defense", "model"), not columns.
    ("grid/registry.py", "attack"): None,
    ("grid/registry.py", "defense"): None,
    ("core/models.py", "model"): None,
    ("run/preflight.py", "attack"): None,
    ("cli/plugins.py", "defense"): None,
    ("api.py", "defense"): 1,
    ("trial/resolved.py", "attack"): 1,
    ("trial/resolved.py", "defense"): 1,
    ("cli/gallery.py", "attack"): 2,  # registry kinds
    ("grid/checks.py", "defense"): None,
    # Preset TOML sections ([preset], [data], [train]) and plugin kinds.
    ("grid/presets.py", "preset"): None,
    ("grid/presets.py", "data"): None,
    ("grid/presets.py", "train"): None,
    ("grid/presets.py", "attack"): None,
    ("grid/presets.py", "defense"): None,
    ("grid/presets.py", "model"): None,
    ("grid/expand.py", "attack"): None,  # registry kinds and error messages
    ("grid/expand.py", "defense"): None,
    ("grid/expand.py", "model"): None,
    ("grid/sources.py", "attack"): None,  # registry kinds
    ("grid/sources.py", "defense"): None,
    # Dataset splits and the registry's name for datasets.
    ("data/datasets.py", "train"): None,
    ("data/datasets.py", "dataset"): None,
    ("data/sources.py", "train"): None,
    ("data/archives.py", "train"): None,
    # CLI subcommands ("run", "data"), plugin kinds and a column header of `bench perf`.
    ("cli/parser.py", "run"): None,  # command names
    ("cli/parser.py", "data"): None,
    ("cli/commands.py", "attack"): None,  # registry kinds
    ("cli/commands.py", "defense"): None,
    ("cli/commands.py", "model"): None,
    # The data directory's name; `git status`; a defense's required method and a tensor property.
    ("core/settings.py", "data"): None,
    ("core/versions.py", "status"): None,
    ("grid/checks.py", "run"): None,
    ("grid/checks.py", "device"): None,
    # Registry kinds in the planner; detection "precision" (a metric's name, reported as
    # det_precision); preset TOML keys ([preset] reference, [train] precision).
    ("run/plan.py", "attack"): 1,
    ("run/plan.py", "defense"): 1,
    ("core/metrics.py", "precision"): None,
    ("trial/evaluate.py", "precision"): 1,
    ("report/markdown.py", "precision"): 1,
    ("grid/presets.py", "precision"): None,
    ("grid/presets.py", "reference"): None,
    # The package-data directory of the shipped reference tables (bench/reference/).
    ("report/references.py", "reference"): 1,
    # The preset schema (bench/grid/preset_schema.py): TOML sections and keys, registry kinds.
    **{
        ("grid/preset_schema.py", key): None
        for key in (
            "preset",
            "data",
            "train",
            "reference",
            "precision",
            "target",
            "clean_fraction",
            "exclude_target_from_poison",
            "attack",
            "defense",
            "dataset",
            "model",
        )
    },
    # Keys inside cached artifacts (renaming them would orphan every cached copy).
    ("trial/poisoning.py", "train"): 2,
    ("trial/backdoored.py", "train_seconds"): 2,
}


def _column_literals() -> dict[tuple[str, str], list[int]]:
    """(file, literal) -> lines, for every string constant in bench/ equal to a column name."""
    names = set(schema.NAMES)
    found: dict[tuple[str, str], list[int]] = {}
    for path in sorted(BENCH.rglob("*.py")):
        if path.name == "schema.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Constant) and node.value in names:
                key = (path.relative_to(BENCH).as_posix(), node.value)
                found.setdefault(key, []).append(node.lineno)
    return found


def test_column_names_are_written_only_in_the_schema():
    stray = [
        f"bench/{file}:{lines} {literal!r}: use bench.schema.Col.{literal}"
        for (file, literal), lines in sorted(_column_literals().items())
        if (file, literal) not in NOT_COLUMNS
        or (NOT_COLUMNS[file, literal] is not None and len(lines) > NOT_COLUMNS[file, literal])
    ]
    assert not stray, "\n".join(stray)


def test_spec_columns_are_the_trial_spec_fields():
    assert set(schema.SPEC_COLUMNS) == {f.name for f in dataclasses.fields(TrialSpec)}
    defaults = {f.name: f.default for f in dataclasses.fields(TrialSpec)}
    for name in schema.SPEC_COLUMNS:
        if defaults[name] is not dataclasses.MISSING:
            assert schema.BY_NAME[name].fill_value == defaults[name], name
    assert all(getattr(Col, c.name) == c.name for c in schema.COLUMNS)


def _spec(**changes) -> TrialSpec:
    spec = expand_grid(with_overrides(load_preset("smoke"), datasets=["cifar10"]))[0]
    return dataclasses.replace(spec, **changes)


def test_config_id_ignores_the_seed_and_nothing_else():
    spec = _spec()
    assert _spec(seed=7).config_id == spec.config_id
    assert _spec(seed=7).trial_id != spec.trial_id
    assert _spec(ratio=0.05).config_id != spec.config_id
    changed = {**spec.defense_params, "unused": 1}
    assert _spec(defense_params=changed).config_id != spec.config_id


def test_a_failed_trial_writes_a_complete_typed_row(tmp_path):
    spec = _spec(ratio=0.95)  # more poison than non-target images exist
    row = run_trial_safely(spec)
    assert row[Col.status] == schema.ERROR
    assert list(row) == list(schema.NAMES)
    assert row[Col.config_id] == spec.config_id
    assert row[Col.schema_version] == schema.SCHEMA_VERSION
    store = ResultsStore(tmp_path / "results.parquet")
    store.upsert([row])
    table = store.read()
    assert list(table.columns) == list(schema.NAMES)
    for c in schema.COLUMNS:
        assert str(table[c.name].dtype) == str(pd.Series([], dtype=c.dtype).dtype), c.name
    assert pd.isna(table[Col.n_train].iloc[0]) and math.isnan(table[Col.ca].iloc[0])


def test_upgrade_brings_an_old_table_up_to_date(tmp_path):
    """A table as the first harness versions wrote it: a subset of today's columns, one of them
    since renamed (flagged_poison, -1 when the defense flags nothing), counts as floats where an
    error row left them empty, and a column the schema no longer has."""
    spec = _spec()
    old_spec = {k: v for k, v in spec.to_dict().items() if k != "clean_fraction"}
    old = pd.DataFrame(
        [
            {
                "trial_id": "t-ok",
                "spec": json.dumps(old_spec, sort_keys=True, separators=(",", ":")),
                **{k: json.dumps(v) if isinstance(v, dict) else v for k, v in old_spec.items()},
                "status": "ok",
                "ca": 0.8,
                "n_train": 1000.0,
                "n_flagged": 12.0,
                "flagged_poison": 9,
                "legacy_note": "kept",
            },
            {
                "trial_id": "t-err",
                "spec": json.dumps({**old_spec, "seed": 1}, sort_keys=True, separators=(",", ":")),
                **{k: json.dumps(v) if isinstance(v, dict) else v for k, v in old_spec.items()},
                "seed": 1,
                "status": "error",
                "ca": float("nan"),
                "n_train": float("nan"),
                "n_flagged": float("nan"),
                "flagged_poison": -1,
                "legacy_note": "kept",
            },
        ]
    )
    path = tmp_path / "results.parquet"
    old.to_parquet(path, index=False)

    table = ResultsStore(path).read()
    assert list(table.columns) == [*schema.NAMES, "legacy_note"]  # nothing read is dropped
    ok, err = table.iloc[0], table.iloc[1]
    assert "flagged_poison" not in table and ok[Col.det_tp] == 9 and math.isnan(err[Col.det_tp])
    assert table[Col.n_train].dtype == "Int64" and ok[Col.n_train] == 1000
    assert pd.isna(err[Col.n_train])
    assert (table[Col.clean_fraction] == 0.0).all()  # TrialSpec's default for older specs
    assert table[Col.schema_version].tolist() == [0, 0]  # written before versioning
    assert ok[Col.config_id] == err[Col.config_id] == schema.config_id_of(old_spec)
    assert math.isnan(ok[Col.wait_seconds]) and ok[Col.run] == "" and ok[Col.error] == ""
    assert ok[Col.data_source] == "" and pd.isna(ok[Col.defense_reconstructed])

    # Readers take it as it is: no column is missing.
    from bench.report.aggregate import trial_table
    from bench.report.timing import stage_breakdown

    assert len(trial_table(table)) == 1 and stage_breakdown(table).loc["all", "trials"] == 1

    # The next write stores the upgraded table; a new row sits beside the upgraded ones.
    store = ResultsStore(path)
    store.upsert([run_trial_safely(_spec(ratio=0.95))])
    again = pd.read_parquet(path)
    assert list(again.columns) == [*schema.NAMES, "legacy_note"] and len(again) == 3
    assert again[Col.schema_version].tolist() == [0, 0, schema.SCHEMA_VERSION]


def test_unknown_row_columns_are_refused():
    with pytest.raises(ValueError, match="not in the schema"):
        schema.complete_row({Col.trial_id: "a", Col.status: schema.OK, "typo_seconds": 1.0})
