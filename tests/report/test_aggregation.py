"""Aggregation that cannot mix what it should not: parameter versions, code revisions, dirty
trees; cells left out of the grid; the comparability note; what `cost vs none` means."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from bench.report.aggregate import aggregate, trial_table
from bench.report.markdown import render_markdown
from bench.report.render import render
from bench.schema import upgrade


def _row(defense, seed, asr, *, rev="A", params=None, finished=100.0, ca=0.80, **extra):
    params = params if params is not None else {}
    return {
        "trial_id": f"{defense}-{seed}-{json.dumps(params)}-{finished}",
        "status": "ok",
        "dataset": "cifar10",
        "preset": "quick",
        "model": "cnn_small",
        "ratio": 0.1,
        "target": 0,
        "attack": "badnets",
        "attack_params": "{}",
        "defense": defense,
        "defense_params": json.dumps(params, sort_keys=True),
        "seed": seed,
        "train": '{"epochs": 5}',
        "data": '{"train_size": 1000}',
        "ca": ca,
        "asr": asr,
        "ra": 0.1,
        "train_seconds": 100.0,
        "device": "cpu",
        "git_rev": rev,
        "finished_at": finished,
        **extra,
    }


@pytest.fixture
def mixed() -> pd.DataFrame:
    """Two seeds of `none` at revision A; ABL in two parameter versions (the old one finished
    first), its seed 1 at revision B; DLP from a dirty tree; a trial merged in twice."""
    rows = [
        _row("none", 0, 0.90, ca=0.82),
        _row("none", 1, 0.94, ca=0.80),
        _row("abl", 0, 0.50, params={"epochs": 1}, finished=50.0),  # superseded version
        _row("abl", 0, 0.30, params={"epochs": 2}, finished=190.0),  # the same trial, earlier
        _row("abl", 0, 0.10, params={"epochs": 2}, finished=200.0),
        _row("abl", 1, 0.20, params={"epochs": 2}, finished=210.0, rev="B"),
        _row("dlp", 0, 0.05, rev="C-dirty"),
    ]
    return upgrade(pd.DataFrame(rows))


def test_versions_seeds_revisions_and_dirty_trees_are_kept_apart_and_flagged(mixed, tmp_path):
    agg = aggregate(mixed).set_index("defense")
    abl = agg.loc["abl"]
    # Only the latest version, one row per seed: seeds 0 (its latest row) and 1.
    assert abl["n"] == 2 and abl["seeds"] == "0,1"
    assert abl["asr"] == pytest.approx((0.10 + 0.20) / 2)
    assert abl["superseded_versions"] == 1 and abl["superseded_trials"] == 1
    # Seed 0 against none seed 0 (same revision); seed 1 against none seed 1 (revision A: used,
    # flagged). DER = (dASR - max(0, dCA) + 1) / 2 per seed, then the mean.
    der0 = (0.90 - 0.10 - (0.82 - 0.80) + 1) / 2
    der1 = (0.94 - 0.20 - 0 + 1) / 2
    assert abl["der"] == pytest.approx((der0 + der1) / 2)
    assert abl["baseline_other_rev"] and not abl["dirty"] and not abl["no_baseline"]
    assert abl["git_rev"] == "A, B" and abl["baseline_git_rev"] == "A"
    dlp = agg.loc["dlp"]
    assert dlp["dirty"] and dlp["baseline_other_rev"] and dlp["n"] == 1
    none = agg.loc["none"]
    assert none["n"] == 2 and not none["baseline_other_rev"] and not none["dirty"]
    assert none["superseded_versions"] == 0

    md = render_markdown(mixed)
    abl_line = next(line for line in md.splitlines() if line.startswith("| abl |"))
    assert "†" in abl_line and "‡" not in abl_line
    dlp_line = next(line for line in md.splitlines() if line.startswith("| dlp |"))
    assert "†" in dlp_line and "‡" in dlp_line
    assert "† Scored against a `none` trial from another code revision" in md
    assert "abl on badnets (at A, B; `none` at A)" in md
    assert "‡ From a working tree with uncommitted changes" in md and "(C-dirty)" in md
    assert "Superseded: 1 older parameter version(s) (1 trial(s)) of 1 cell(s)" in md

    render(mixed, tmp_path)
    exported = pd.read_csv(tmp_path / "leaderboard.csv").set_index("defense")
    assert exported.loc["abl", "baseline_other_rev"] and exported.loc["dlp", "dirty"]
    assert exported.loc["abl", "superseded_versions"] == 1 and exported.loc["abl", "n"] == 2


def test_a_trial_is_scored_only_against_the_none_of_its_own_spec(mixed):
    """A newer ABL version with another training budget: the cell shows it alone, and no `none`
    trial shares its spec, so it gets no DER (not one against another budget's baseline)."""
    newer = _row("abl", 2, 0.1, params={"epochs": 2}, train='{"epochs": 9}', finished=300.0)
    table = pd.concat([mixed, upgrade(pd.DataFrame([newer]))], ignore_index=True)
    abl = trial_table(table).set_index("defense").loc[["abl"]]
    assert len(abl) == 1 and abl["no_baseline"].item() and math.isnan(abl["der"].item())
    cell = aggregate(table).set_index("defense").loc["abl"]
    assert cell["no_baseline"] and cell["superseded_versions"] == 2 and cell["n"] == 1
    assert "§ No `none` trial with the same spec and seed" in render_markdown(table)


def test_a_defense_at_a_later_revision_is_scored_against_the_same_none():
    """A defense's revision is its own (like its parameters): I-BAU at revision 2 had no DER and
    no CA change because `none` (revision 1) did not share its 'spec'."""
    rows = [
        _row("none", 0, 0.9, ca=0.80),
        _row("ibau", 0, 0.1, ca=0.75, defense_revision=2),
    ]
    ibau = trial_table(upgrade(pd.DataFrame(rows))).set_index("defense").loc["ibau"]
    assert not ibau["no_baseline"] and ibau["d_ca"] == pytest.approx(-0.05)


def test_cost_vs_none_is_own_work_over_the_baselines_on_the_same_device():
    rows = [
        _row("none", 0, 0.9, train_seconds=100.0, defense_seconds=0.1),
        # Post-training defense: 50 s of its own work on top of the 100 s undefended model,
        # after waiting 900 s for another trial's artifact (not part of its cost).
        _row("ibau", 0, 0.1, train_seconds=150.0, defense_seconds=50.0, wait_seconds=900.0),
        _row("abl", 0, 0.1, train_seconds=240.0, defense_seconds=240.0, device="cuda:0"),
    ]
    trials = trial_table(upgrade(pd.DataFrame(rows))).set_index("defense")
    assert trials.loc["ibau", "cost_vs_none"] == pytest.approx(1.5)
    assert trials.loc["none", "cost_vs_none"] == pytest.approx(1.0)
    assert math.isnan(trials.loc["abl", "cost_vs_none"])  # seconds of another device


def _skipped(attack, defense, ratio=0.1, dataset="gtsrb", reason="needs 3921 images; has 210"):
    return {
        "trial_id": f"skip-{dataset}-{attack}-{defense}-{ratio}",
        "status": "skipped",
        "error": f"clean-label ratio {ratio}: {reason}",
        "dataset": dataset,
        "preset": "quick",
        "ratio": ratio,
        "attack": attack,
        "defense": defense,
        "seed": 0,
    }


def test_cells_left_out_are_na_with_their_reason_even_without_any_ok_row():
    only_skipped = upgrade(pd.DataFrame([_skipped("sig", "none"), _skipped("sig", "abl")]))
    md = render_markdown(only_skipped)
    assert "## gtsrb · preset `quick` · poison ratio 0.1" in md
    assert "| none | N/A¹ | – |" in md and "| abl | N/A¹ | – |" in md
    assert "N/A¹ Left out of the grid (sig): clean-label ratio 0.1: needs 3921 images" in md

    ok = _row("none", 0, 0.9) | {"dataset": "gtsrb"}
    other = _skipped("lc", "none", reason="lc's own reason")
    md = render_markdown(upgrade(pd.DataFrame([ok, _skipped("sig", "none"), other])))
    header = next(line for line in md.splitlines() if line.startswith("| defense \\ attack"))
    assert header == "| defense \\ attack | badnets | lc | sig | mean |"
    assert "| N/A² | N/A¹ |" in md or "| N/A¹ | N/A² |" in md
    assert "lc's own reason" in md and "needs 3921 images" in md
    assert "Failed trials" not in md  # left out is not failed


def test_the_comparability_note_follows_the_rows_reference_not_the_preset_name():
    named = _row("none", 0, 0.9, preset="custom", reference="backdoorbench-preactresnet18")
    md = render_markdown(upgrade(pd.DataFrame([named])))
    assert "follows the published reference `backdoorbench-preactresnet18`" in md
    assert "Not comparable" not in md
    unnamed = _row("none", 0, 0.9, preset="paper", reference="")
    md = render_markdown(upgrade(pd.DataFrame([unnamed])))
    assert "Not comparable with published numbers" in md and "follows the published" not in md


def test_rows_of_another_resolved_precision_are_never_pooled():
    """`auto` resolves per machine (bf16 where native, else fp32): a grid resumed on another
    machine must not average a cell's bf16 and fp32 seeds, nor score a bf16 trial against an
    fp32 `none`. The latest precision's rows are shown; the others count as superseded."""
    rows = [
        _row("none", 0, 0.90, ca=0.80, precision_used="bf16", finished=1.0),
        _row("none", 1, 0.95, ca=0.70, precision_used="fp32", finished=2.0),
        _row("abl", 0, 0.10, ca=0.78, precision_used="bf16", finished=1.5),
        _row("abl", 1, 0.20, ca=0.60, precision_used="fp32", finished=2.5),
    ]
    agg = aggregate(upgrade(pd.DataFrame(rows))).set_index("defense")
    assert agg.loc["abl", "n"] == 1 and agg.loc["abl", "precision_used"] == "fp32"
    assert agg.loc["abl", "asr"] == pytest.approx(0.20)  # not the mean of 0.10 and 0.20
    assert agg.loc["abl", "superseded_versions"] == 1
    assert agg.loc["abl", "d_ca"] == pytest.approx(0.60 - 0.70)  # the fp32 `none`, same seed
    # Same seed, both precisions of `none`: the bf16 trial meets the bf16 one, though the fp32
    # one finished later (without precision in the key it would win as the most recent).
    later_fp32 = _row("none", 0, 0.95, ca=0.70, precision_used="fp32", finished=3.0)
    trials = trial_table(upgrade(pd.DataFrame([rows[0], rows[2], later_fp32])))
    assert trials.set_index("defense").loc["abl", "base_ca"] == pytest.approx(0.80)
