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
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.run.driver import run_order
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
    from bench.grid.expand import expand_grid
    from bench.grid.presets import load_preset, with_overrides
    from bench.run import driver, ray_executor

    monkeypatch.setattr(ray_executor, "run_ray", lambda *a, **k: None)  # stopped at once
    preset = with_overrides(load_preset("smoke"), datasets=["cifar10"], attacks=["badnets"])
    specs = expand_grid(preset)
    summary = driver.run_grid(specs, preset.resources, results_dir=tmp_path)
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


# --------------------------------------------------------------------------- the local executor

NO_RAY = '''
"""Make ray unimportable in this interpreter and its children; log every attempt to import it."""
import os, sys, traceback


class _NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            with open(os.environ["RAY_IMPORT_LOG"], "a") as log:
                log.write(f"import {name}\\n" + "".join(traceback.format_stack(limit=12)) + "\\n")
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, _NoRay())
'''


@pytest.mark.slow
def test_local_executor_runs_the_grid_without_ray(tmp_path):
    """Issue 17's GPU machine has no Ray: `--executor local` runs trials side by side as
    isolated child processes, with the store, progress lines and per-trial logs of the Ray path,
    and nothing of it (nor `import bench`) imports ray."""
    shim = tmp_path / "no-ray"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_RAY)
    attempts = tmp_path / "ray-imports.log"
    results = tmp_path / "results"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(shim), str(Path(__file__).parents[2])]),
        "RAY_IMPORT_LOG": str(attempts),
    }
    argv = [*SMOKE, "--seeds", "0,1", "--executor", "local", "--results-dir", str(results)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not attempts.exists(), attempts.read_text()
    assert "local executor: up to 2 trials at once (1 CPU each; 2 CPUs here)" in done.stdout
    df = ResultsStore(results / "results.parquet").read()
    assert len(df) == 2 and set(df["status"]) == {"ok"} and set(df["attempts"]) == {1}
    assert df["started_at"].max() < df["finished_at"].min(), "the two trials did not overlap"
    assert df["pid"].nunique() == 2 and set(df["ray_node"]) == {""}
    (run_dir,) = (results / "runs").iterdir()
    assert set(df["run"]) == {run_dir.name}
    progress = (run_dir / "bench.log").read_text()
    assert "[1/2 trials done, 0 failed]" in progress and "[2/2 trials done, 0 failed]" in progress
    for trial_id in df["trial_id"]:
        text = (run_dir / "trials" / f"{trial_id}.log").read_text()
        assert f"trial {trial_id}:" in text and "done: CA" in text
    # A rerun finds every trial done.
    again = subprocess.run(
        [sys.executable, "-m", "bench.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert again.returncode == 0 and "nothing to run" in again.stdout, again.stdout
    assert not attempts.exists()


def test_without_ray_auto_falls_back_to_the_local_executor_and_says_so(
    tmp_path, monkeypatch, capsys
):
    from bench.errors import BenchError
    from bench.run import driver

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    as_file = tmp_path / "file"
    as_file.write_text("")
    # The run stops early (its results dir is a file); the fallback was said first.
    assert main([*SMOKE, "--results-dir", str(as_file / "results")]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(" ", 1)[1].startswith("hardware:"), lines  # the hardware line first
    said = [line for line in lines if "ray cannot be imported" in line]
    assert said and "local executor" in said[0], lines
    assert driver.choose_executor("auto") == "local"
    with pytest.raises(BenchError, match="ray cannot be imported"):
        driver.choose_executor("ray")
    with pytest.raises(BenchError, match="ray cannot be imported"):
        driver.choose_executor("auto", address="10.0.0.1:6379")
    with pytest.raises(BenchError, match="--address joins a Ray cluster"):
        driver.choose_executor("local", address="10.0.0.1:6379")


def test_fractional_gpus_pack_trials_onto_one_gpu():
    from bench.run.local_executor import GpuPool
    from bench.run.recording import concurrency
    from bench.spec import Resources

    quarter = Resources(cpus_per_trial=1, gpus_per_trial=0.25)
    assert concurrency(quarter, cpus=16, gpus=1) == 4
    assert concurrency(quarter, cpus=2, gpus=1) == 2  # never more trials than cores
    assert concurrency(Resources(cpus_per_trial=1, gpus_per_trial=0.1), cpus=16, gpus=1) == 10
    pool = GpuPool(["0"])
    assert [pool.acquire(0.25) for _ in range(5)] == [["0"]] * 4 + [None]
    pool.release(["0"], 0.25)
    assert pool.acquire(0.25) == ["0"]
    pair = GpuPool(["2", "5"])  # as CUDA_VISIBLE_DEVICES names them
    assert pair.acquire(0.5) == ["2"] and pair.acquire(2) is None and pair.acquire(0.5) == ["2"]
    assert pair.acquire(1) == ["5"] and pair.acquire(0.25) is None
