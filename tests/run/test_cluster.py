"""A grid across a real multi-node Ray cluster (head + a second raylet, on loopback) that uses
Ray's token authentication, as Ray 2.61 makes every cluster do: with the head's token the grid
runs on both nodes; without it the driver says so in one line instead of "check the address".

Ray reads ``RAY_AUTH_MODE`` when it is imported, and other tests import it first, so the nodes
(``ray start``) and the drivers run as processes of their own, each with its environment."""

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_of(marker: str) -> set[int]:
    """Processes whose command line names ``marker`` (the cluster's temp dir), and their
    descendants (Ray's agents and workers rename themselves ``ray::...``), except this one's."""
    parents, found = {}, set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            command = (proc / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        pid = int(proc.name)
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if marker.encode() in command:
            found.add(pid)
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return found - {os.getpid()}


def _stop_cluster(temp_dir: str) -> None:
    """Kill this test's cluster only. `ray stop --force` would kill every Ray process of the
    user on the machine: it once took down a grid running beside `make test`."""
    for pid in _processes_of(temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def token_cluster(tmp_path):
    """(address, environment with the token) of a head and a second raylet, 1 CPU each."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray, "the ray command of this environment"
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAY_AUTH_") and k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    }
    # Nodes named by 127.0.0.1 (Ray's local-only mode would refuse a second raylet).
    env = {**base, "RAY_AUTH_MODE": "token"}
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    address = f"127.0.0.1:{_free_port()}"
    # A temp dir of its own names the cluster's processes (and is short: Ray's socket paths
    # must fit in 107 bytes, which pytest's tmp_path would not leave them).
    temp_dir = tempfile.mkdtemp(prefix="bench-ray-")
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    common += ["--temp-dir", temp_dir]
    try:
        subprocess.run(
            [ray, "start", "--head", "--port", address.split(":")[1], "--include-dashboard",
             "false", *common],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [ray, "start", "--address", address, *common],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield address, env, base
    finally:
        _stop_cluster(temp_dir)


def _bench(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_grid_runs_across_both_nodes_of_a_token_authenticated_cluster(token_cluster, tmp_path):
    address, env, without_token = token_cluster
    run = ["run", "--preset", "smoke", "--attacks", "badnets,blended", "--address", address]
    # Without the token (the README's recipe before it named it): one line naming the cause.
    refused = _bench([*run, "--results-dir", str(tmp_path / "refused")], without_token)
    assert refused.returncode == 2, refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert "uses token authentication" in last and "RAY_AUTH_MODE is unset" in last, last
    assert "RAY_AUTH_TOKEN" in last and "check the address" not in last
    assert not (tmp_path / "refused" / "results.parquet").exists()
    # With it: the grid runs on both nodes.
    done = _bench([*run, "--results-dir", str(tmp_path)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert len(df) == 2 and set(df["status"]) == {"ok"}
    # One CPU per node and two concurrent one-CPU trials: each node ran one.
    assert df["ray_node"].nunique() == 2
    assert df["node_ip"].nunique() == 1  # two raylets of one machine


def test_the_cluster_teardown_kills_its_own_processes_only(tmp_path):
    """`ray stop --force` here killed a grid running beside `make test`; the teardown now kills
    the processes that name the test cluster's temp dir, and their children, and nothing else."""
    marker = tempfile.mkdtemp(prefix="bench-ray-")
    ours = subprocess.Popen(["sh", "-c", "sleep 60 & wait", marker])  # a child, as raylets have
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        deadline = 50
        while len(_processes_of(marker)) < 2 and deadline:  # sh and its sleep
            deadline -= 1
            subprocess.run(["sleep", "0.1"])
        assert len(_processes_of(marker)) == 2
        _stop_cluster(marker)
        assert ours.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None and not _processes_of(marker)
        assert not Path(marker).exists()
    finally:
        bystander.kill()
        ours.kill()
