"""The grid end to end through Ray Tune: table, leaderboard, skip on rerun, kill and resume."""

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.config import expand_grid, load_preset, with_overrides
from bench.runner import run_order
from bench.store import ResultsStore

SMOKE = ["run", "--preset", "smoke", "--datasets", "cifar10"]


@pytest.mark.slow
def test_grid_through_ray_tune_into_the_leaderboard(tmp_path):
    out = str(tmp_path)
    # Two real trials plus one that must fail (ratio beyond the non-target pool).
    code = main([*SMOKE, "--attacks", "badnets,blended", "--results-dir", out])
    assert code == 0
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert len(df) == 2 and set(df["status"]) == {"ok"}
    assert set(df["attack"]) == {"badnets", "blended"} and set(df["defense"]) == {"none"}
    for column in (
        "ca",
        "asr",
        "ra",
        "wall_seconds",
        "train_seconds",
        "data_source",
        "versions",
        "git_rev",
        "started_at",
        "trial_id",
        "node",
    ):
        assert df[column].notna().all(), column
    assert df["data_source"].str.contains("cifar10").all()
    assert df["trial_id"].is_unique
    run_dirs = list((tmp_path / "runs").iterdir())
    assert (run_dirs[0] / "bench.log").read_text().count("trials done") == 2
    assert len(list((run_dirs[0] / "trials").glob("*.log"))) == 2

    assert main(["leaderboard", "--results-dir", out]) == 0
    markdown = (tmp_path / "LEADERBOARD.md").read_text()
    assert "## cifar10 · preset `smoke` · poison ratio 0.1" in markdown
    for _, r in df.iterrows():
        assert f"{100 * r['ca']:.1f} / {100 * r['asr']:.1f}" in markdown
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    # Only `none` ran: its ASR heatmap, nothing to compare it with; no attack gallery (that is
    # `bench attacks gallery`).
    assert plots == ["asr_heatmap_cifar10_smoke_r0.1.png"]
    assert (tmp_path / "index.html").exists() and (tmp_path / "leaderboard.csv").exists()

    # A rerun skips both trials and leaves the table alone.
    assert main([*SMOKE, "--attacks", "badnets,blended", "--results-dir", out]) == 0
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == 2
    # A trial past its time limit becomes a 'timeout' row after its retries; the grid completes.
    argv = [*SMOKE, "--attacks", "badnets,blended", "--seeds", "7", "--results-dir", out]
    assert main([*argv, "--trial-timeout", "0.01", "--retries", "1"]) == 3
    df2 = pd.read_parquet(tmp_path / "results.parquet")
    failed = df2[df2["status"] != "ok"]
    assert len(df2) == 4 and list(failed["status"]) == ["timeout", "timeout"]
    assert (failed["attempts"] == 2).all()
    assert failed["error"].str.contains("exceeded its time limit of 0.01 s").all()
    assert "[plugin" not in (tmp_path / "LEADERBOARD.md").read_text()


def _kill_session(sid: int) -> None:
    """SIGKILL every process left in the driver's session (Linux /proc)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    os.kill(int(name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.mark.slow
def test_killed_driver_then_rerun_loses_and_duplicates_nothing(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "bench.cli",
        *SMOKE,
        "--attacks",
        "badnets,blended",
        "--seeds",
        "0,1,2",
        "--results-dir",
        str(tmp_path),
    ]
    table = tmp_path / "results.parquet"
    driver = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 180
        while not table.exists() and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert table.exists(), "no trial finished before the deadline"
        driver.send_signal(signal.SIGKILL)  # the driver dies mid-grid
        driver.wait()
    finally:
        _kill_session(driver.pid)  # Ray's orphaned helpers of that session
    done_before = len(ResultsStore(table).read())
    assert 1 <= done_before < 6

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{6 - done_before} trials to run ({done_before} already done)" in rerun.stdout
    df = ResultsStore(table).read()
    assert len(df) == 6 and df["trial_id"].is_unique and set(df["status"]) == {"ok"}
    assert sorted(df["seed"].tolist()) == [0, 0, 1, 1, 2, 2]
    assert not list(Path(tmp_path).glob("*.tmp"))


def test_an_interrupted_grid_counts_unrun_trials_apart_from_failures(tmp_path, monkeypatch):
    """Trials that never ran (Ctrl-C) are 'not run', not 'failed': they have no traceback."""
    from bench import runner
    from bench.config import expand_grid, load_preset, with_overrides

    monkeypatch.setattr(runner, "_connect_ray", lambda *a, **k: None)
    monkeypatch.setattr(runner, "_fit_with_tune", lambda *a, **k: None)  # stopped at once
    preset = with_overrides(load_preset("smoke"), datasets=["cifar10"], attacks=["badnets"])
    specs = expand_grid(preset)
    summary = runner.run_grid(specs, preset.resources, results_dir=tmp_path)
    assert (summary.ok, summary.errors, summary.not_run) == (0, 0, len(specs))


def test_run_order_puts_none_first_and_shared_stages_before_their_second_user():
    preset = with_overrides(
        load_preset("quick"), attacks=["badnets", "blended", "sig"], defenses=["nab", "abl", "none"]
    )
    order = run_order(list(reversed(expand_grid(preset))))
    defenses = [s.defense for s in order]
    assert defenses == ["none"] * 3 + [defenses[3]] * 3 + [defenses[6]] * 3
    assert sorted(order, key=lambda s: s.trial_id) == sorted(
        expand_grid(preset), key=lambda s: s.trial_id
    )
    # two workers never start on the same cell at once
    cell = [(s.attack, s.ratio, s.seed) for s in order]
    assert all(a != b for a, b in itertools.pairwise(cell))
