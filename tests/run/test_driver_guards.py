"""What the driver refuses before a grid starts and what it guarantees while it runs: bad
resources, a non-Ray address, results-directory problems, a second driver, loopback only
(cases 6, 8, 9 and 10 of issue 22)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from tests.hostile_support import (
    RESOURCE_CASES,
    SMOKE,
    _is_loopback,
    _listening,
    _smoke_driver,
    bounded,
    read_only,
)


@pytest.mark.parametrize(
    ("flags", "message"), RESOURCE_CASES, ids=[" ".join(c[0]) for c in RESOURCE_CASES]
)
def test_case6_non_finite_resources_are_refused_at_once(flags, message, tmp_path, capsys):
    """Before: --gpus-per-trial nan hung until killed at 600 s; --cpus-per-trial nan gave a
    traceback."""
    with bounded(120):  # a hang guard (before: 600 s)
        code = main([*SMOKE, *flags, "--results-dir", str(tmp_path / "results")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_case6_address_of_a_non_ray_port_fails_fast(http_server, tmp_path, capsys):
    """Before: ray.init retried for many minutes against the dashboard's port."""
    with bounded(120):  # a hang guard, far below "many minutes" and far above a loaded refusal
        code = main([*SMOKE, "--address", http_server, "--results-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--address {http_server} is not a Ray cluster" in err and "it answered" in err


def test_case8_results_dir_problems_are_refused_before_anything_runs(tmp_path, capsys):
    """Before: a read-only results dir, or one that is a file, gave a traceback."""
    as_file = tmp_path / "results-file"
    as_file.write_text("not a directory")
    assert main([*SMOKE, "--results-dir", str(as_file / "sub")]) == 2
    assert f"{as_file} is a file, not a directory" in capsys.readouterr().err
    assert as_file.read_text() == "not a directory"

    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        assert main([*SMOKE, "--results-dir", str(locked)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"results directory {locked} is not writable" in err
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("command", ["leaderboard", "timing"])
def test_case8_leaderboard_and_timing_without_results_say_so(command, tmp_path, capsys):
    """Before: KeyError / FileNotFoundError tracebacks, and the missing directory created."""
    missing = tmp_path / "missing"
    assert main([command, "--results-dir", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no results to show" in err and "does not exist" in err
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([command, "--results-dir", str(empty)]) == 2
    assert "holds no results.parquet" in capsys.readouterr().err
    assert list(empty.iterdir()) == []


def test_case8_rows_survive_an_unwritable_table(tmp_path, monkeypatch):
    """Before: a trial whose row could not be written (table unwritable, runs/ writable) was
    lost and reported as an interruption."""
    from bench.run import driver, ray_executor, recording
    from bench.store import ResultsStore

    results = tmp_path / "results"
    run_dir = driver.new_run_dir(results)
    table = results / "results.parquet"
    row = {"trial_id": "t1", "status": "ok", "ca": 0.5, "asr": float("nan")}
    with read_only(results):
        recording.record_row(row, table, run_dir)  # must not raise, must not lose the row
    assert (run_dir / "pending" / "t1.json").exists()
    # The next successful write merges it ...
    recording.record_row({"trial_id": "t2", "status": "ok", "ca": 0.6}, table, run_dir)
    assert set(ResultsStore(table).read()["trial_id"]) == {"t1", "t2"}
    assert not list(results.rglob("pending/*.json"))
    # ... and so does the next run.
    with read_only(results):
        recording.record_row({"trial_id": "t3", "status": "ok", "ca": 0.7}, table, run_dir)
    monkeypatch.setattr(ray_executor, "run_ray", lambda *a, **k: None)
    preset = with_overrides(load_preset("smoke"), datasets=["cifar10"])
    driver.run_grid(expand_grid(preset), preset.resources, results_dir=results)
    assert {"t1", "t2", "t3"} <= set(ResultsStore(table).read()["trial_id"])


def test_case9_duplicated_axis_values_run_each_trial_once():
    """Before: --attacks badnets,badnets ran the trial twice (and exited 3)."""
    preset = with_overrides(
        load_preset("smoke"),
        datasets=["cifar10", "cifar10"],
        attacks=["badnets", "badnets"],
        defenses=["none", "none"],
        ratios=[0.1, 0.10],
        seeds=[0, 0],
    )
    specs = expand_grid(preset)
    assert len(specs) == 1


def test_case9_cpu_trials_never_outnumber_the_cores(tmp_path, capsys, monkeypatch):
    """Before: --cpus-per-trial 0.01 ran six trials at once on two cores."""
    import ray

    from bench.run import ray_executor
    from bench.spec import Resources

    assert main([*SMOKE, "--cpus-per-trial", "0.01", "--results-dir", str(tmp_path)]) == 2
    assert "a CPU trial needs at least 1 CPU" in capsys.readouterr().err
    # GPU trials may ask for fractions of a CPU, but no more run at once than there are cores.
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})
    assert ray_executor._concurrency(Resources(cpus_per_trial=0.1, gpus_per_trial=0.1)) == 2


def test_case9_a_second_driver_on_the_same_results_dir_is_refused(tmp_path, capsys):
    """Before: two drivers started in the same second shared one run folder and both computed
    every trial."""
    from bench.run import driver

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from bench.run.driver import driver_lock\n"
            "with driver_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with bounded(120):  # a hang guard
            assert main([*SMOKE, "--results-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"another bench run (pid {holder.pid} on" in err
        assert not (tmp_path / "runs").exists()
    finally:
        holder.kill()
        holder.wait()
    # Runs started in the same second get their own directories.
    first, second = driver.new_run_dir(tmp_path, "same"), driver.new_run_dir(tmp_path, "same")
    assert first != second and first.is_dir() and second.is_dir()


@pytest.mark.slow
def test_case10_a_local_run_listens_on_loopback_only(tmp_path):
    """Before: the GCS server, the raylet and the workers listened on every interface and the
    runtime-env agent on the machine's address."""
    import ray  # noqa: F401  (ray ships psutil and puts it on sys.path)

    psutil = pytest.importorskip("psutil")

    results = tmp_path / "results"
    driver = _smoke_driver(results, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[tuple[str, int, str]] = set()
    try:
        deadline = time.monotonic() + 300
        while driver.poll() is None and time.monotonic() < deadline:
            seen |= _listening(driver.pid, psutil)
            time.sleep(0.5)
        output = driver.communicate(timeout=60)[0] if driver.poll() is not None else ""
        assert driver.returncode == 0, output
    finally:
        if driver.poll() is None:
            driver.kill()
        for proc in psutil.process_iter():  # Ray helpers of that session, if any linger
            try:
                if os.getsid(proc.pid) == driver.pid:
                    proc.kill()
            except (psutil.Error, ProcessLookupError):
                pass
    names = {name for _, _, name in seen}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), seen
    outside = sorted(s for s in seen if not _is_loopback(s[0]))
    assert not outside, f"listening beyond loopback: {outside}"
    # Case 9's last item: the trial's log says which artifacts it built.
    (trial_log,) = results.glob("runs/*/trials/*.log")
    assert "building artifact backdoored_model/" in trial_log.read_text()


def test_a_file_size_limit_is_refused_in_one_line_before_anything_is_written(tmp_path):
    """Before: under `ulimit -f` Ray said "The current node timed out during startup" and the
    local executor "[enforce fail at inline_container.cc:672] unexpected pos"."""
    import resource

    results = tmp_path / "results"

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # 1 MB

    done = subprocess.run(
        [sys.executable, "-c", "import sys; from bench.cli import main; sys.exit(main())",
         *SMOKE, "--results-dir", str(results)],
        capture_output=True, text=True, preexec_fn=limit_files, timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "ulimit -f" in err and "1,024 KB" in err, err
    assert not results.exists()


def test_a_full_disk_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    """Before: Ray's `OSError: [Errno 28] No space left on device` traceback at start."""
    monkeypatch.setenv("BENCH_MIN_FREE_MB", str(10**12))  # more than any disk holds
    assert main([*SMOKE, "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not enough disk space" in err, err
    assert "MB free on" in err and "(results)" in err and "BENCH_MIN_FREE_MB" in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("code", "said"),
    [(errno.ENOSPC, "the disk is full"), (errno.EFBIG, "file-size limit (ulimit -f)")],
)
def test_a_disk_that_fills_during_a_run_is_said_in_one_line(
    code, said, tmp_path, monkeypatch, capsys
):
    from bench.run import driver

    def fill(*_args, **_kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "results" / "results.parquet"))

    monkeypatch.setattr(driver, "run_grid", fill)
    assert main([*SMOKE, "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err and "results.parquet" in err, err
    assert "Traceback" not in err
