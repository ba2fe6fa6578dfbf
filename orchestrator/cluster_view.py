"""`orch cluster up | status | down`: a real multi-node Ray on this machine.

The nodes are ``ray start`` processes of our own (``cluster/local.py``), recorded with their
PIDs under ``$ORCH_HOME/cluster/``; ``down`` stops exactly those (and the queue server of
this ORCH_HOME), nothing else. ``orch run --address auto`` and the queue find the cluster
through the same records.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
from pydantic import BaseModel, Field

from orchestrator.exceptions import ClusterError, OrchestratorError, UsageError
from orchestrator.scheduling.token import bearer_headers


def cluster_dir() -> Path:
    from orchestrator.queue_client import queue_dir

    return queue_dir().parent / "cluster"


def ray_nodes(dashboard_url: str, token: str) -> list[dict]:
    """Ray's view of the nodes (state API): id, state, labels, CPUs."""
    reply = httpx.get(
        f"{dashboard_url}/api/v0/nodes",
        params={"limit": 100, "detail": "true"},
        headers=bearer_headers(token),
        timeout=10,
    )
    reply.raise_for_status()
    nodes = reply.json()["data"]["result"]["result"]
    return [
        {
            "node_id": n["node_id"],
            "state": n["state"],
            "is_head": n.get("is_head_node", False),
            "labels": {k: v for k, v in (n.get("labels") or {}).items() if k.startswith("orch")},
            "cpus": (n.get("resources_total") or {}).get("CPU", 0.0),
        }
        for n in nodes
    ]


def wait_for_nodes(dashboard_url: str, token: str, count: int, timeout_s: float = 120) -> list:
    deadline = time.time() + timeout_s
    while True:
        try:
            alive = [n for n in ray_nodes(dashboard_url, token) if n["state"] == "ALIVE"]
        except httpx.HTTPError:
            alive = []
        if len(alive) >= count:
            return alive
        if time.time() > deadline:
            raise ClusterError(f"only {len(alive)} of {count} nodes joined in {timeout_s:.0f} s")
        time.sleep(0.5)


class DashboardInfo(BaseModel):
    """Where a person opens the Ray dashboard, and what it will ask for (``orch dashboard``)."""

    dashboard_url: str
    auth: str = Field(description="The dashboard's authentication mode: 'token' or 'disabled'.")
    token_path: str | None = Field(
        description="The file whose contents the dashboard's token dialog takes (never the "
        "token itself); None when auth is off or the token is only in $RAY_AUTH_TOKEN."
    )
    token_in_env: bool = Field(False, description="The token is in $RAY_AUTH_TOKEN.")


def dashboard_info(address: str | None) -> DashboardInfo:
    """The dashboard of the cluster at ``address`` (any form; None: $RAY_ADDRESS, else the
    cluster recorded under ``$ORCH_HOME/cluster``).

    Raises:
        ClusterError: no such cluster answers.
    """
    from orchestrator.address import dashboard_url, given_address, recorded_head

    given = given_address(address)
    head = recorded_head() if given is None or given.kind == "auto" else None
    if given is None and head is None:
        raise ClusterError(
            f"no cluster recorded under {cluster_dir()}: start one with `orch cluster up`, or "
            "name one with --address or RAY_ADDRESS (`orch run` prints the dashboard of its "
            "own local Ray while it runs)"
        )
    url = head.dashboard_url if head is not None else dashboard_url(given)
    try:
        mode = httpx.get(f"{url}/api/authentication_mode", timeout=10).json()
        auth = str(mode.get("authentication_mode", "disabled"))
    except (httpx.HTTPError, ValueError, AttributeError):
        auth = "unknown"
    if auth == "disabled":
        return DashboardInfo(dashboard_url=url, auth=auth, token_path=None)
    if head is not None:
        return DashboardInfo(dashboard_url=url, auth=auth, token_path=head.token_path)
    if os.environ.get("RAY_AUTH_TOKEN"):
        return DashboardInfo(dashboard_url=url, auth=auth, token_path=None, token_in_env=True)
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return DashboardInfo(dashboard_url=url, auth=auth, token_path=path)


def _status_of(address: str, as_json: bool) -> int:
    """``orch cluster status --address``: Ray's nodes of a cluster orch did not start."""
    from orchestrator.address import dashboard_url, given_address
    from orchestrator.scheduling.token import ray_token

    url = dashboard_url(given_address(address))
    try:
        nodes = ray_nodes(url, ray_token() or "")
    except httpx.HTTPError as exc:
        raise ClusterError(f"the Ray dashboard at {url} did not answer: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(f"{url} does not answer like a Ray dashboard ({exc!r})") from None
    if as_json:
        print(json.dumps({"dashboard_url": url, "ray_nodes": nodes}))
        return 0
    print(f"Ray cluster at {url}: {len(nodes)} nodes")
    for n in nodes:
        print(f"  Ray node {n['node_id'][:12]}  {n['state']}  {n['cpus']:g} CPU")
    return 0


def cluster_command(args) -> int:
    """``orch cluster up | status | down`` on the cluster recorded under $ORCH_HOME."""
    if args.cluster_command == "up":
        return _cluster_up(args)
    if args.cluster_command == "status":
        return _cluster_status(args)
    return _cluster_down()


def _node_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OrchestratorError(f"--label {item!r}: use KEY=VALUE")
        labels[key] = value
    return labels


def _cluster_up(args) -> int:
    from cluster.ingress import IngressError
    from cluster.local import cluster_up

    if args.nodes < 1 or args.cpus_per_node < 1:
        raise OrchestratorError("--nodes and --cpus-per-node must be at least 1")
    labels = _node_labels(args.label)
    try:
        head, workers = cluster_up(
            cluster_dir(), args.nodes, args.cpus_per_node, labels, ingress=args.ingress
        )
    except IngressError as exc:
        raise UsageError(str(exc)) from None
    except RuntimeError as exc:
        raise ClusterError(str(exc)) from None
    nodes = wait_for_nodes(head.dashboard_url, head.token, args.nodes)
    print(
        f"{len(nodes)} nodes up: head pid {head.pid}, workers "
        + (", ".join(f"{w.name} pid {w.pid}" for w in workers) or "none")
    )
    print(
        f"  Ray {head.gcs_address} (orch run --address auto), dashboard "
        f"{head.dashboard_url}; token {head.token_path}"
    )
    print(f"  Serve ingress: {head.ingress} (on the head)")
    return 0


def _cluster_status(args) -> int:
    from cluster.local import LocalHead, load_workers

    if args.address is not None or os.environ.get("RAY_ADDRESS"):
        return _status_of(args.address, args.json)
    state = cluster_dir()
    head = LocalHead.load(state / "head.json")
    if head is None:
        print(f"no cluster recorded under {state}; start one with: orch cluster up")
        return 1
    workers = load_workers(state)
    up = head.alive()
    nodes = ray_nodes(head.dashboard_url, head.token) if up else []
    report = {
        "head": {
            "pid": head.pid,
            "alive": up,
            "dashboard_url": head.dashboard_url,
            "gcs_address": head.gcs_address,
        },
        "workers": [{"name": w.name, "pid": w.pid, "alive": w.alive()} for w in workers],
        "ray_nodes": nodes,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"head  pid {head.pid}  {'alive' if up else 'DOWN'}  {head.gcs_address}  "
        f"{head.dashboard_url}"
    )
    for w in report["workers"]:
        print(f"{w['name']}  pid {w['pid']}  {'alive' if w['alive'] else 'DOWN'}")
    for n in nodes:
        print(
            f"  Ray node {n['node_id'][:12]}  {n['state']}  {n['cpus']:g} CPU  "
            f"{n['labels'].get('orch.node', '')}"
        )
    return 0


def _cluster_down() -> int:
    """The queue server of this ORCH_HOME, then the nodes, each by its recorded PID."""
    from cluster.local import cluster_down
    from orchestrator.queue_client import queue_dir

    state = cluster_dir()
    try:
        pid = json.loads((queue_dir() / "server.json").read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
        print(f"stopped the orch server (pid {pid})")
    except (OSError, ValueError, KeyError):
        pass
    head, workers = cluster_down(state)
    for w in workers:
        print(f"stopped {w.name} (pid {w.pid})")
    print(f"stopped the head (pid {head.pid})" if head else f"no head recorded under {state}")
    return 0
