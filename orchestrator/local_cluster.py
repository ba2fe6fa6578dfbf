"""A real multi-node Ray on this machine, as the SDK drives it (``Client.cluster_up``,
``cluster_status``, ``cluster_down``); ``orch cluster`` only parses and prints.

The nodes are ``ray start`` processes of our own (``cluster/local.py``), recorded with their
PIDs under ``$ORCH_HOME/cluster/``; stopping stops exactly those (and the queue server of
this ORCH_HOME), nothing else. ``orch run --address auto`` and the queue find the cluster
through the same records.
"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
from pydantic import BaseModel, Field

from orchestrator.cluster_view import cluster_dir, ray_nodes
from orchestrator.exceptions import ClusterError, OrchestratorError, UsageError


class RayNode(BaseModel):
    """One node as Ray's state API sees it."""

    node_id: str
    state: str
    is_head: bool = False
    labels: dict[str, str] = Field(default_factory=dict, description="Its orch.* labels.")
    cpus: float = 0.0


class NodeProcess(BaseModel):
    """A ``ray start`` process orch started: the head or a worker node."""

    name: str
    pid: int
    alive: bool


class HeadProcess(BaseModel):
    pid: int
    alive: bool
    dashboard_url: str
    gcs_address: str


class ClusterStarted(BaseModel):
    """What ``cluster_up`` started."""

    head: NodeProcess
    workers: list[NodeProcess]
    gcs_address: str
    dashboard_url: str
    token_path: str | None
    ingress: str = Field(description="How Serve takes HTTP on it: haproxy | proxy.")
    nodes_alive: int


class ClusterStatus(BaseModel):
    """The recorded cluster's processes and Ray's view of its nodes (``head`` and
    ``workers`` are None for a cluster orch did not start, named by its address)."""

    head: HeadProcess | None = None
    workers: list[NodeProcess] | None = None
    dashboard_url: str | None = None
    ray_nodes: list[RayNode]


class ClusterStopped(BaseModel):
    """What ``cluster_down`` stopped (PIDs); ``head`` is None when none was recorded."""

    server_pid: int | None = None
    workers: list[NodeProcess] = Field(default_factory=list)
    head: NodeProcess | None = None


def _labels(items: list[str] | dict[str, str]) -> dict[str, str]:
    if isinstance(items, dict):
        return dict(items)
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OrchestratorError(f"--label {item!r}: use KEY=VALUE")
        labels[key] = value
    return labels


def start_cluster(
    nodes: int, cpus_per_node: int, labels: list[str] | dict[str, str], ingress: str | None
) -> ClusterStarted:
    """Start a head and ``nodes - 1`` worker raylets; returns once all have joined.

    Raises:
        OrchestratorError: a count below 1 or a malformed label.
        UsageError: the ingress cannot run here (the message says what to install or set).
        ClusterError: a node did not start or join.
    """
    from cluster.ingress import IngressError
    from cluster.local import cluster_up

    if nodes < 1 or cpus_per_node < 1:
        raise OrchestratorError("--nodes and --cpus-per-node must be at least 1")
    try:
        head, workers = cluster_up(
            cluster_dir(), nodes, cpus_per_node, _labels(labels), ingress=ingress
        )
    except IngressError as exc:
        raise UsageError(str(exc)) from None
    except RuntimeError as exc:
        raise ClusterError(str(exc)) from None
    alive = _await_joined(head, workers, nodes)
    return ClusterStarted(
        head=NodeProcess(name="head", pid=head.pid, alive=True),
        workers=[NodeProcess(name=w.name, pid=w.pid, alive=True) for w in workers],
        gcs_address=head.gcs_address,
        dashboard_url=head.dashboard_url,
        token_path=head.token_path,
        ingress=head.ingress,
        nodes_alive=len(alive),
    )


JOIN_TIMEOUT_S = 150.0
RESTARTS_PER_WORKER = 2


def _await_joined(head, workers: list, nodes: int) -> list:
    """Wait until ``nodes`` nodes are alive in Ray. A worker whose process exited before it
    joined is started again on fresh ports (``RESTARTS_PER_WORKER`` times); one that never
    joins fails the start with its name and its log's tail.

    Raises:
        ClusterError: a worker kept failing, or not every node joined in ``JOIN_TIMEOUT_S``.
    """
    from cluster.local import restart_worker, save_workers

    state, restarts = cluster_dir(), dict.fromkeys((w.name for w in workers), 0)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:
        try:
            alive = [n for n in ray_nodes(head.dashboard_url, head.token) if n["state"] == "ALIVE"]
        except httpx.HTTPError:
            alive = []
        if len(alive) >= nodes:
            return alive
        joined = {n["labels"].get("orch.node") for n in alive}
        waiting = [w for w in workers if w.name not in joined]
        for index, worker in enumerate(workers):
            if worker in waiting and not worker.alive():
                if restarts[worker.name] >= RESTARTS_PER_WORKER:
                    raise ClusterError(
                        f"{worker.name} exited before joining, {restarts[worker.name] + 1} "
                        f"times; its log ({worker.log_path}) ends:\n{worker.log_tail()}"
                    )
                restarts[worker.name] += 1
                workers[index] = restart_worker(head, state, worker)
                save_workers(state, workers)
        if time.monotonic() > deadline:
            tails = "\n".join(f"{w.name} ({w.log_path}):\n{w.log_tail(600)}" for w in waiting)
            raise ClusterError(
                f"only {len(alive)} of {nodes} nodes joined in {JOIN_TIMEOUT_S:.0f} s; "
                f"not joined: {', '.join(w.name for w in waiting) or 'the head'}\n{tails}"
            )
        time.sleep(0.5)


def cluster_status(address: str | None = None) -> ClusterStatus | None:
    """The cluster at ``address`` (any form), else the one recorded under $ORCH_HOME;
    None when none is recorded.

    Raises:
        ClusterError: the named cluster's dashboard did not answer like Ray's.
    """
    if address is not None or os.environ.get("RAY_ADDRESS"):
        return _status_at(address)
    from cluster.local import LocalHead, load_workers

    state = cluster_dir()
    head = LocalHead.load(state / "head.json")
    if head is None:
        return None
    up = head.alive()
    return ClusterStatus(
        head=HeadProcess(
            pid=head.pid, alive=up, dashboard_url=head.dashboard_url, gcs_address=head.gcs_address
        ),  # fmt: skip
        workers=[NodeProcess(name=w.name, pid=w.pid, alive=w.alive()) for w in load_workers(state)],
        ray_nodes=ray_nodes(head.dashboard_url, head.token) if up else [],
    )


def _status_at(address: str | None) -> ClusterStatus:
    from orchestrator.address import dashboard_url, given_address
    from orchestrator.scheduling.token import ray_token

    url = dashboard_url(given_address(address))
    try:
        nodes = ray_nodes(url, ray_token() or "")
    except httpx.HTTPError as exc:
        raise ClusterError(f"the Ray dashboard at {url} did not answer: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(f"{url} does not answer like a Ray dashboard ({exc!r})") from None
    return ClusterStatus(dashboard_url=url, ray_nodes=nodes)


def stop_cluster() -> ClusterStopped:
    """Stop the queue server of this ORCH_HOME, then the recorded nodes, each by its PID."""
    from cluster.local import cluster_down
    from orchestrator.queue_client import queue_dir

    stopped = ClusterStopped()
    try:
        pid = json.loads((queue_dir() / "server.json").read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
        stopped.server_pid = pid
    except (OSError, ValueError, KeyError):
        pass
    head, workers = cluster_down(cluster_dir())
    stopped.workers = [NodeProcess(name=w.name, pid=w.pid, alive=False) for w in workers]
    if head is not None:
        stopped.head = NodeProcess(name="head", pid=head.pid, alive=False)
    return stopped
