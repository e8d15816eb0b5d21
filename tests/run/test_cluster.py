"""A grid across a real multi-node Ray cluster (head + worker node, on loopback)."""

import pandas as pd
import pytest

from bench.cli import main


@pytest.fixture
def two_node_cluster(monkeypatch):
    # Keep every Ray process on 127.0.0.1 (Ray otherwise binds to the machine's interface).
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
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
def test_grid_runs_across_both_nodes(two_node_cluster, tmp_path):
    assert two_node_cluster.address.startswith("127.0.0.1:")
    code = main(
        [
            "run",
            "--preset",
            "smoke",
            "--attacks",
            "badnets,blended",
            "--address",
            two_node_cluster.address,
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
