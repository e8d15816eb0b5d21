"""A grid across a real multi-node Ray cluster (head + worker node, on loopback) that uses
Ray's token authentication, as Ray 2.61 makes every cluster do: with the head's token the grid
runs on both nodes; without it the driver says so in one line instead of "check the address"."""

import os
import secrets
import subprocess
import sys

import pandas as pd
import pytest

from bench.cli import main


@pytest.fixture
def two_node_cluster(monkeypatch, tmp_path):
    # Keep every Ray process on 127.0.0.1 (Ray otherwise binds to the machine's interface).
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Token authentication on every node and in the driver: the token in the environment comes
    # first, before any ~/.ray/auth_token of this machine.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    )
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_grid_runs_across_both_nodes_of_a_token_authenticated_cluster(two_node_cluster, tmp_path):
    address = two_node_cluster.address
    assert address.startswith("127.0.0.1:")
    # Without the token (the README's recipe before it named it): one line naming the cause.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    refused = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", "--preset", "smoke", "--attacks", "badnets",
         "--address", address, "--results-dir", str(tmp_path / "refused")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert "uses token authentication" in last and "RAY_AUTH_MODE is unset" in last, last
    assert "RAY_AUTH_TOKEN" in last and "check the address" not in last
    assert not (tmp_path / "refused" / "results.parquet").exists()
    # With it: the grid runs on both nodes.
    code = main(
        [
            "run",
            "--preset",
            "smoke",
            "--attacks",
            "badnets,blended",
            "--address",
            address,
            "--results-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert len(df) == 2 and set(df["status"]) == {"ok"}
    # One CPU per node and two concurrent one-CPU trials: each node ran one.
    assert df["ray_node"].nunique() == 2
    assert set(df["node_ip"]) == {"127.0.0.1"}
