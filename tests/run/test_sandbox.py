"""A trial's process writes only where the harness lets it (Landlock, where the kernel has it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.run.sandbox import MIN_ABI, confine_writes, landlock_abi

needs_landlock = pytest.mark.skipif(
    landlock_abi() < MIN_ABI, reason=f"this kernel has no Landlock ABI {MIN_ABI}"
)

PROBE = """
import json, os, sys
from pathlib import Path
from bench.run.sandbox import confine_writes

writable, protected = Path(sys.argv[1]), Path(sys.argv[2])
confinement = confine_writes([writable], protect=[protected])
outcome = {"applied": confinement.applied, "detail": confinement.detail}
for name, target in [("writable", writable / "a"), ("protected", protected / "results.parquet")]:
    try:
        target.write_bytes(b"x")
        os.replace(target, target.with_suffix(".moved"))
        outcome[name] = "written"
    except PermissionError:
        outcome[name] = "denied"
import subprocess  # what the process starts is confined too
child = subprocess.run(["touch", str(protected / "child")], capture_output=True)
outcome["child"] = "written" if child.returncode == 0 else "denied"
print(json.dumps(outcome))
"""


def _probe(writable: Path, protected: Path) -> dict:
    import json

    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE), str(writable), str(protected)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_landlock
def test_a_confined_process_writes_beneath_its_places_only(tmp_path):
    writable, protected = tmp_path / "cache", tmp_path / "results"
    writable.mkdir()
    protected.mkdir()
    outcome = _probe(writable, protected)
    assert outcome["applied"], outcome
    assert (outcome["writable"], outcome["protected"], outcome["child"]) == (
        "written",
        "denied",
        "denied",
    )
    assert (writable / "a.moved").exists() and not list(protected.iterdir())


def test_a_protected_place_inside_a_writable_one_is_not_pretended_safe(tmp_path):
    """Landlock can only allow: with the results directory inside the cache it cannot be kept
    out of reach, and the confinement says so instead of applying a rule that protects nothing."""
    (tmp_path / "results").mkdir()
    confinement = confine_writes([tmp_path], protect=[tmp_path / "results"])
    assert not confinement.applied
    assert "lies inside the writable" in confinement.describe()


@needs_landlock
def test_a_trial_log_says_where_it_may_write(tmp_path):
    from bench.cli import main
    from bench.store import ResultsStore

    results = tmp_path / "results"
    grid = ["run", "--preset", "smoke", "--datasets", "cifar10", "--attacks", "badnets"]
    grid += ["--defenses", "none", "--executor", "local", "--results-dir", str(results)]
    assert main(grid) == 0
    assert ResultsStore(results / "results.parquet").read()["status"].tolist() == ["ok"]
    (log,) = results.glob("runs/*/trials/*.log")
    line = next(x for x in log.read_text().splitlines() if "writes confined" in x)
    assert str(Path(tmp_path / "artifacts").resolve()) in line and str(results) not in line


@needs_landlock
def test_nested_places_are_named_once(tmp_path):
    (tmp_path / "cache" / "artifacts").mkdir(parents=True)
    (tmp_path / "results").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from bench.run.sandbox import confine_writes; "
         "print(confine_writes([Path(sys.argv[1]), Path(sys.argv[1]) / 'artifacts'], "
         "protect=[Path(sys.argv[2])]).describe())", str(tmp_path / "cache"),
         str(tmp_path / "results")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.strip() == f"writes confined (Landlock) to {tmp_path / 'cache'}"


@needs_landlock
def test_a_process_with_other_threads_is_not_pretended_confined(tmp_path):
    """Landlock confines the calling thread only: with another thread running, nothing is."""
    script = (
        "import sys, threading, time; from pathlib import Path; "
        "from bench.run.sandbox import confine_writes; "
        "threading.Thread(target=time.sleep, args=(5,), daemon=True).start(); "
        "print(confine_writes([Path(sys.argv[1])]).describe())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert "writes not confined:" in done.stdout and "threads run" in done.stdout, done.stderr


def test_private_temp_dirs_of_dead_parents_are_swept(tmp_path, monkeypatch):
    """A parent killed with SIGKILL cannot remove its trials' TMPDIRs; the next attempt does."""
    from bench.run import isolation

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    root = tmp_path / isolation.TRIAL_TMP
    dead = subprocess.Popen(["true"])
    dead.wait()
    (root / f"{dead.pid}-t1-abc").mkdir(parents=True)
    live = root / f"{os.getpid()}-t2-def"
    live.mkdir()
    fresh = isolation._private_tmp("t3")
    assert sorted(p.name for p in root.iterdir()) == sorted([live.name, fresh.name])
    assert fresh.name.startswith(f"{os.getpid()}-t3-")
