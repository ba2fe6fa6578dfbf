"""The Ray dashboard's REST API as orch reads it: the nodes (state API) and where a person
opens the dashboard (``orch dashboard``). Starting and stopping orch's own local cluster is
``orchestrator.local_cluster``; printing it, ``orchestrator.cli_cluster``.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
from pydantic import BaseModel, Field

from orchestrator.exceptions import ClusterError
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
