"""Hostile plugins: a defense that blocks, dies, kills its process or its parent, leaves orphans
or overwrites the table still ends in a row, and the grid goes on (cases 4, 5 and 9 of issue 22)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from bench.cli import main
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.run.sandbox import landlock_abi
from tests.hostile_support import (
    _gone,
    _hostile_grid,
    _is_zombie,
    _rows,
    _trial_logs,
    bounded,
)


def test_case4_a_blocking_defense_is_stopped_at_its_time_limit(hostile_plugins, tmp_path):
    """Before: a defense sleeping in run() (no training step to check the limit at) ran on past
    --trial-timeout (150 s with a 20 s limit). Now the trial's process is killed: a plain
    blocking call at the limit plus a grace second, one that ignores SIGTERM two seconds later."""
    from bench.run.isolation import TERM_WAIT_S, kill_grace_s

    results = tmp_path / "results"
    with bounded(300):  # a hang guard; the limit itself is checked on each row's wall time
        code = main(
            _hostile_grid(
                "sleeper,stubborn", results, "--trial-timeout", "2", "--executor", "local"
            )
        )
    assert code == 3
    rows = _rows(results)
    assert list(rows["status"]) == ["timeout", "timeout"]
    bound = 2 + kill_grace_s(2) + 2 * TERM_WAIT_S + 1
    for name, row in rows.iterrows():
        assert "exceeded its time limit of 2 s" in row["error"], row["error"]
        assert "was killed after" in row["error"] and f"{name}: about to misbehave" in row["error"]
        assert row["wall_seconds"] < bound, (name, row["wall_seconds"])
        assert row["defense_package"] == "bench-hostile" and _gone(row["pid"])
    assert rows.loc["sleeper", "wall_seconds"] < 2 + kill_grace_s(2) + 1  # no SIGTERM wait


def test_case5_a_trial_whose_process_dies_leaves_an_error_row(hostile_plugins, tmp_path, capsys):
    """Before: a worker killed by SIGKILL (the OOM killer), os._exit(1) or a segfault left no
    row: 'did not run (interrupted)', no retry, nothing in the failed-trials list."""
    results = tmp_path / "results"
    with bounded(120):
        code = main(
            _hostile_grid(
                "exit_one,sigkill,segfault", results, "--retries", "1", "--executor", "local"
            )
        )
    assert code == 3
    out = capsys.readouterr().out
    assert "3 trial(s) failed" in out and "did not run" not in out
    rows = _rows(results)
    assert set(rows["status"]) == {"error"} and set(rows["attempts"]) == {2}
    expected = {
        "exit_one": "exited with code 1 before reporting a result",
        "sigkill": "was killed by SIGKILL (out of memory?",
        "segfault": "was killed by SIGSEGV (segmentation fault",
    }
    for name, message in expected.items():
        last = rows.loc[name, "error"].strip().splitlines()[-1]
        assert last.startswith("TrialDied: the trial's process (pid") and message in last, last
        # case 9: the packages are known before the trial runs
        assert rows.loc[name, "defense_package"] == "bench-hostile"
        assert rows.loc[name, "attack_package"] == "backdoor-leaderboard"
        log = (results / "runs" / rows.loc[name, "run"] / "trials").glob("*.log")
        text = next(p for p in log if rows.loc[name, "trial_id"] in p.name).read_text()
        assert "attempt 1/2: " in text and "attempt 2/2: " in text  # retried, both logged
    segfault_log = next((results / "runs").glob(f"*/trials/{rows.loc['segfault', 'trial_id']}.log"))
    # Each attempt's crash report follows its last log line, whole: the child writes both (the
    # parent relaying the lines raced the report and could land inside it).
    crash = "segfault: about to misbehave\nFatal Python error: Segmentation fault\n"
    assert segfault_log.read_text().count(crash) == 2, segfault_log.read_text()
    # The failed-trials lists (markdown and page) show them.
    assert main(["leaderboard", "--results-dir", str(results)]) == 0
    board = (results / "LEADERBOARD.md").read_text()
    page = (results / "index.html").read_text()
    assert "Failed trials (3)" in page
    for name, message in expected.items():
        assert message.split(" (")[0] in board
        assert f"<td>{name}</td>" in page


def test_a_plugins_orphan_ends_with_a_local_run(hostile_plugins, tmp_path, monkeypatch):
    """Before: on the local executor a plugin's child in a session of its own was still running
    after the run ended (the Ray path reaped it)."""
    results = tmp_path / "results"
    pidfile = tmp_path / "artifacts" / "orphan.pid"  # where a trial may write
    monkeypatch.setenv("HOSTILE_PIDFILE", str(pidfile))
    with bounded(120):
        code = main(_hostile_grid("orphaner", results, "--executor", "local"))
    assert code == 0 and _rows(results).loc["orphaner", "status"] == "ok"
    orphan = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _gone(orphan) and time.monotonic() < deadline:  # a zombie until reparented
        time.sleep(0.1)
    assert _gone(orphan) or _is_zombie(orphan), f"pid {orphan} outlived the grid"


def test_a_plugin_overwriting_the_table_destroys_no_row(hostile_plugins, tmp_path, monkeypatch):
    """Before: a defense that overwrote results.parquet mid-run left the table moved aside as
    corrupt and rebuilt with its own row only; every earlier row was gone from it. Now the
    trial's process cannot write to the results directory (Landlock): the defense fails with
    the kernel's refusal and the table is untouched. Where the kernel has no Landlock, the table
    is rebuilt from the journal, with every row."""
    results = tmp_path / "results"
    table = results / "results.parquet"
    monkeypatch.setenv("HOSTILE_TABLE", str(table))
    with bounded(120):
        assert main(_hostile_grid("none", results, "--executor", "local")) == 0  # the record
        code = main(_hostile_grid("vandal", results, "--executor", "local"))
    rows = _rows(results)
    assert sorted(rows.index) == ["none", "vandal"] and rows.loc["none", "status"] == "ok"
    if landlock_abi():
        assert code == 3 and rows.loc["vandal", "status"] == "error"
        assert "PermissionError" in rows.loc["vandal", "error"]
        assert str(table) in rows.loc["vandal", "error"]
        assert not list(results.glob("results.parquet.corrupt-*"))  # never damaged
    else:
        assert code == 0 and rows.loc["vandal", "status"] == "ok"
        assert list(results.glob("results.parquet.corrupt-*"))  # the damaged file is kept aside


@pytest.mark.slow
def test_a_plugin_that_kills_its_driver_ends_as_an_error_row_and_the_rest_runs(
    hostile_plugins, tmp_path
):
    """Before: a defense that SIGKILLed `bench run` (local executor) left no row, not even for
    `none`, and every rerun was killed again. Now the attempts in flight leave markers: the next
    run gives them a second chance last and alone (so `none` gets its row), and once a trial was
    in flight at more driver deaths than --retries + 1 it becomes an error row saying so."""
    results = tmp_path / "results"
    command = [sys.executable, "-m", "bench.cli"]
    command += _hostile_grid("none,regicide", results, "--executor", "local")

    def drive() -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, timeout=240)

    assert drive().returncode == -signal.SIGKILL  # both trials in flight at the death
    second = drive()  # none alone, then regicide alone, which kills the driver again
    assert second.returncode == -signal.SIGKILL, second.stdout[-2000:]
    assert "runs last, alone" in second.stdout
    assert _rows(results).loc["none", "status"] == "ok"
    third = drive()
    assert third.returncode == 3, third.stdout[-2000:]
    row = _rows(results).loc["regicide"]
    assert row["status"] == "error" and row["attempts"] == 2
    assert row["error"].startswith("DriverDied: bench run died 2 times while this trial ran")


def test_a_peeking_plugin_finds_no_ground_truth(hostile_plugins, tmp_path, monkeypatch):
    """Before: the cell's cached poisoned-sets artifact held the poison mask, and a defense that
    torch.loaded it scored detection TPR 1.0 and precision 1.0. The masks now live in no artifact
    and in no object of the defense's process: the harness derives them after it returns."""
    results = tmp_path / "results"
    peeked = tmp_path / "artifacts" / "peeked.json"  # where a trial may write
    monkeypatch.setenv("HOSTILE_PEEKED", str(peeked))
    with bounded(180):
        assert main(_hostile_grid("none,peeker", results, "--executor", "local")) == 0
    assert json.loads(peeked.read_text()) == {"in_files": 0, "in_memory": 0}
    row = _rows(results).loc["peeker"]
    assert row["status"] == "ok" and row["n_flagged"] == -1 and row["n_poison"] > 0
    assert pd.isna(row["det_tpr"])  # nothing flagged: nothing to score


@pytest.mark.parametrize(
    ("defense", "flags", "message"),
    [
        ("sigkill", [], "was killed by SIGKILL (out of memory?"),
        ("exit_one", [], "exited with code 1"),
        ("sleeper", ["--trial-timeout", "2"], "exceeded its time limit of 2 s"),
    ],
)
def test_case5_check_defense_fails_a_plugin_that_kills_its_trial(
    hostile_plugins, defense, flags, message, capsys
):
    """Before: bench check-defense died with the plugin, printing no FAIL line."""
    with bounded(240):  # a hang guard
        assert main(["check-defense", defense, *flags]) == 1
    out = capsys.readouterr().out
    fail = next(line for line in out.splitlines() if line.strip().startswith("FAIL"))
    assert "smoke trial" in fail and message in fail, out
    assert f"| {defense}: about to misbehave" in out
    assert out.rstrip().endswith("fix the FAIL lines above, then run this again")


def test_case9_error_rows_name_the_attack_and_defense_packages():
    """Before: a trial that failed had empty package columns (they were filled on success)."""
    from bench.trial.pipeline import run_trial_safely

    preset = with_overrides(load_preset("smoke"), datasets=["cifar10"], defenses=["ibau"])
    spec = expand_grid(preset)[0]
    row = run_trial_safely(spec.__class__(**{**spec.to_dict(), "ratio": 0.95}))
    assert row["status"] == "error" and "maximum possible ratio" in row["error"]
    assert (row["attack_package"], row["defense_package"]) == ("backdoor-leaderboard",) * 2
    assert row["defense_version"] and row["attack_version"]


@pytest.mark.slow
def test_case4_and_5_through_ray_workers(hostile_plugins, tmp_path):
    """The issue's setting: under Ray Tune, a defense killed by SIGKILL took its worker down
    (no row, 'did not run') and a blocking one outlived --trial-timeout."""
    results = tmp_path / "results"
    with bounded(240):
        code = main(
            _hostile_grid("sigkill,sleeper", results, "--trial-timeout", "3", "--executor", "ray")
        )
    assert code == 3
    rows = _rows(results)
    assert rows.loc["sigkill", "status"] == "error"
    assert "was killed by SIGKILL (out of memory?" in rows.loc["sigkill", "error"]
    assert rows.loc["sleeper", "status"] == "timeout"
    assert "exceeded its time limit of 3 s" in rows.loc["sleeper", "error"]
    assert rows["ray_node"].str.len().min() > 0 and set(rows["defense_package"]) == {
        "bench-hostile"
    }


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigterm_to_the_driver_stops_the_grid_with_its_summary(hostile_plugins, tmp_path, executor):
    """Before: SIGTERM to `bench run` on the Ray path ended in Ray's C++ stack dump, exit 134
    and no summary line. Now it stops as Ctrl-C does: running trials are stopped, the usual
    summary says what did not run, exit status 143, and a rerun resumes."""
    results = tmp_path / "results"
    argv = _hostile_grid("sleeper", results, "--executor", executor)
    driver = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *argv],
        start_new_session=True,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with bounded(240):
            # the sleeper trial is running once its log says so
            while not any("about to misbehave" in p.read_text() for p in _trial_logs(results)):
                assert driver.poll() is None, driver.stdout.read()
                time.sleep(0.5)
            driver.send_signal(signal.SIGTERM)
            out, _ = driver.communicate()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 143, out[-3000:]
    assert "terminated (SIGTERM)" in out and "grid interrupted in" in out, out[-3000:]
    assert "0 ok, 0 failed, 1 not run" in out and "SIGTERM received at time" not in out


@pytest.mark.slow
def test_a_trial_whose_ray_worker_dies_becomes_an_error_row(hostile_plugins, tmp_path, capsys):
    """Before: SIGKILL of the trial's Ray worker (not the trial's child) ended the grid with
    '1 not run', no row, and a raw ActorDiedError in the log; --retries did not apply."""
    results = tmp_path / "results"
    with bounded(300):
        code = main(_hostile_grid("none,parricide", results, "--executor", "ray", "--retries", "1"))
    out = capsys.readouterr().out
    assert code == 3 and "1 trial(s) failed" in out and "did not run" not in out, out[-2000:]
    rows = _rows(results)
    assert rows.loc["none", "status"] == "ok"
    row = rows.loc["parricide"]
    assert row["status"] == "error" and row["attempts"] == 2, row["error"]
    assert row["error"].startswith("WorkerDied: the Ray worker running this trial died after 2")
