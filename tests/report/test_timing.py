"""The per-stage time breakdown of a grid, from result rows."""

import json
import math

import pandas as pd
import pytest

from bench.report.timing import grid_wall_seconds, per_seed, render_markdown, stage_breakdown
from bench.schema import upgrade


def _row(defense, started, wall, cache, stages, status="ok"):
    return {
        "defense": defense,
        "status": status,
        "attack_seconds": 2.0,
        "backdoored_model_cache": cache,
        "backdoored_train_seconds": 100.0,
        "defense_seconds": sum(stages.values()),
        "eval_seconds": 5.0,
        "wall_seconds": wall,
        "stage_seconds": json.dumps(stages),
        "started_at": started,
        "finished_at": started + wall,
    }


def test_breakdown_counts_the_undefended_model_once_and_expands_defense_stages():
    df = upgrade(
        pd.DataFrame(
            [
                _row("none", 1000.0, 110.0, "built", {"load": 0.1}),
                _row(
                    "dbd", 1000.0, 400.0, "hit", {"simclr": 300.0, "linear": 20.0, "mixmatch": 70.0}
                ),
                _row("dbd", 1400.0, 50.0, "", {}, status="error"),
            ]
        )
    )
    table = stage_breakdown(df)
    assert table.loc["none", "backdoored_seconds"] == 100.0  # built there
    assert table.loc["dbd", "backdoored_seconds"] == 0.0  # loaded from the cache
    assert table.loc["dbd", "simclr"] == 300.0 and math.isnan(table.loc["none", "simclr"])
    assert "load" not in table.columns
    assert table.loc["all", "trials"] == 2  # the error row is not timed
    assert table.loc["all", "wall_seconds"] == pytest.approx(510.0)
    assert grid_wall_seconds(df) == pytest.approx(450.0)  # first start to last end
    text = render_markdown(df)
    assert "Wall time 7.5 min from the first trial's start to the last one's end, 2 trials" in text
    assert "| defense | trials | attack | backdoored | defense | eval | wall | simclr |" in text
    assert "| dbd | 1 | 0.0 | 0.0 | 6.5 | 0.1 | 6.7 | 5.0 | 0.3 | 1.2 |" in text


def test_each_run_gets_its_own_wall_time_and_breakdown():
    df = upgrade(
        pd.DataFrame(
            [
                {**_row("none", 0.0, 60.0, "built", {}), "run": "a"},
                {**_row("none", 600.0, 120.0, "hit", {}), "run": "b"},
            ]
        )
    )
    text = render_markdown(df)
    run_a, run_b = text.index("## Run `a`"), text.index("## Run `b`")
    assert run_a < text.index("Wall time 1.0 min", run_a) < run_b
    assert text.index("Wall time 2.0 min", run_b) < text.index("## All rows")
    assert "Wall time" not in text[text.index("## All rows") :]
    no_run = pd.DataFrame([_row("none", 0.0, 9.0, "built", {})])  # a table older than `run`
    older = render_markdown(pd.concat([df, upgrade(no_run)]))
    assert "## Rows without a run name\n\nRows from tables older" in older


def test_skipped_cells_make_no_section_of_their_own():
    """A preset's left-out cells are rows without a run or timings (they never ran); before,
    they rendered an empty 'Rows without a run name: no successful trials' section."""
    ran = {**_row("none", 0.0, 60.0, "built", {}), "run": "a"}
    skipped = {"defense": "dbd", "status": "skipped"}
    text = render_markdown(upgrade(pd.DataFrame([ran, skipped])))
    assert "Rows without a run name" not in text and "no successful trials" not in text
    assert "Wall time 1.0 min" in text


def test_each_seed_gets_its_wall_time_summed_over_the_runs_that_ran_it():
    """A seed resumed in a later session counts the time its runs ran, not the gap between."""
    df = upgrade(
        pd.DataFrame(
            [
                {**_row("none", 0.0, 60.0, "built", {}), "run": "a", "seed": 0},
                {**_row("abl", 60.0, 60.0, "hit", {}), "run": "a", "seed": 0},
                {**_row("ibau", 86_400.0, 240.0, "hit", {}), "run": "b", "seed": 0},
                {**_row("none", 86_640.0, 120.0, "built", {}), "run": "b", "seed": 1},
                {**_row("abl", 86_760.0, 1.0, "", {}), "run": "b", "seed": 1, "status": "error"},
            ]
        ).assign(device="cpu: AMD EPYC (1 thread)", precision_used="fp32")
    )
    seeds = per_seed(df)
    assert seeds.loc[0, "trials"] == 3 and seeds.loc[0, "runs"] == 2
    assert seeds.loc[0, "wall_min"] == pytest.approx((120.0 + 240.0) / 60)  # not a day
    assert seeds.loc[0, "compute_min"] == pytest.approx(360.0 / 60)
    assert seeds.loc[1, "trials"] == 1 and seeds.loc[1, "wall_min"] == pytest.approx(2.0)
    text = render_markdown(df)
    assert "## Per seed" in text
    assert "| 0 | 3 | 2 | 6.0 | 6.0 | cpu: AMD EPYC (1 thread) | fp32 |" in text
