"""Scale out: a sweep pointed at a multi-node Ray cluster (here three nodes on loopback) spreads its trials over
the nodes, and a 2-worker Train run spans two of them."""

from __future__ import annotations

import os

import pytest

from test_sweep_run import ROOT, runs_of, space_file, uvlm


@pytest.fixture
def cluster(monkeypatch):
    from ray.cluster_utils import Cluster

    # Every node must import the trial body, as every node of a real cluster has uvlm installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()  # stops exactly the processes this cluster started


@pytest.mark.slow  # too slow for the default run; .ci/run runs it
def test_trials_spread_over_nodes_and_a_two_worker_run_spans_two(cluster, tmp_path):
    single = space_file(tmp_path, "spread", seeds=3, resources={"workers": 1, "cpus_per_worker": 1})
    result = uvlm(tmp_path, "sweep", str(single), "--address", cluster.address, "--trainable", "sweep_bodies:spread")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 at a time" in result.stderr, "concurrency comes from the cluster's CPUs, not this machine's"
    nodes = {run.data.tags["test.worker_nodes"] for run in runs_of(tmp_path, "spread")}
    assert len(nodes) == 3, f"three concurrent 1-CPU trials on three 1-CPU nodes: {nodes}"

    double = space_file(tmp_path, "span", seeds=1, resources={"workers": 2, "cpus_per_worker": 1})
    result = uvlm(tmp_path, "sweep", str(double), "--address", cluster.address, "--trainable", "sweep_bodies:spread")
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = runs_of(tmp_path, "span")
    assert run.info.status == "FINISHED"
    assert len(run.data.tags["test.worker_nodes"].split(",")) == 2, "one Train run, workers on two nodes"
