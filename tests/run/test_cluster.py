"""A grid across a real multi-node Ray cluster (head + a second raylet, on loopback) that uses
Ray's token authentication, as Ray 2.61 makes every cluster do: with the head's token the grid
runs on both nodes; without it the driver says so in one line instead of "check the address".

Ray reads ``RAY_AUTH_MODE`` when it is imported, and other tests import it first, so the nodes
(``ray start``) and the drivers run as processes of their own, each with its environment."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
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
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


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
