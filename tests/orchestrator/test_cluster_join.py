"""`orch cluster up` on a busy machine: a node whose `ray start` exits before it joins is
started again on fresh ports, and the cluster comes up whole.

The way it exits here is quick (its temp dir cannot be made); a port another process took
between the pick and the bind does the same after Ray's own 30 s wait for the node, which
would make this test a minute long."""

from __future__ import annotations

import pytest

import cluster.local as local
from orchestrator.local_cluster import cluster_status, start_cluster, stop_cluster

pytestmark = pytest.mark.slow


def test_a_node_that_exits_before_joining_is_started_again_and_joins(monkeypatch):
    node_flags, spoiled = local._node_flags, []

    def first_worker_cannot_start(temp_dir, num_cpus, resources, labels):
        flags = node_flags(temp_dir, num_cpus, resources, labels)
        if labels.get("orch.node") == "worker-1" and not spoiled:
            spoiled.append(True)
            flags[flags.index("--temp-dir") + 1] = "/dev/null/ray"
        return flags

    start_worker, starts = local.start_worker, []

    def counted_start(*args, **kwargs):
        worker = start_worker(*args, **kwargs)
        starts.append(worker.pid)
        return worker

    monkeypatch.setattr(local, "_node_flags", first_worker_cannot_start)
    monkeypatch.setattr(local, "start_worker", counted_start)
    try:
        started = start_cluster(2, 1, [], "proxy")
        status = cluster_status()
        assert spoiled == [True] and len(starts) == 2, starts
        assert started.nodes_alive == 2
        assert sorted(n.labels["orch.node"] for n in status.ray_nodes) == ["head", "worker-1"]
        # the worker that joined is the second start, recorded for `orch cluster down`
        assert started.workers[0].pid == starts[1]
        assert local.load_workers(local_dir())[0].pid == starts[1]
    finally:
        stopped = stop_cluster()
    assert [w.name for w in stopped.workers] == ["worker-1"] and stopped.head is not None


def local_dir():
    from orchestrator.cluster_view import cluster_dir

    return cluster_dir()
