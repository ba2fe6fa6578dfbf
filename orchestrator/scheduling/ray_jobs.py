"""The one place that talks to Ray for the queue: the Jobs API and the cluster's resources.

Admitted jobs run as Ray Jobs (``ray job list``, ``ray job logs`` and the dashboard show
them), submitted through the Jobs REST API. Free resources come from the GCS
(``ray.available_resources``), i.e. what the cluster really has free, not what jobs were
told: a stopped job's workers keep their CPUs until they exit, and admission must wait.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel

log = logging.getLogger(__name__)

TERMINAL_RAY_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


class ClusterResources(BaseModel):
    total: dict[str, float]
    available: dict[str, float]
    nodes: list[dict[str, float]]


class RayUnavailable(Exception):
    """The cluster did not answer; the scheduler tries again on its next pass."""


def _plain(resources: dict) -> dict[str, float]:
    """Drop Ray's per-node and internal resources (node:..., object_store_memory...)."""
    return {
        k: float(v)
        for k, v in resources.items()
        if not k.startswith("node:") and k not in ("object_store_memory",)
    }


class RayJobs:
    """Ray's Jobs REST API (the one ``ray job submit`` and the Jobs SDK use) with a timeout
    on every call, and the cluster's resources (this process is a Ray driver).

    Not the Jobs SDK: its requests have no timeout, and a dashboard that accepts a call and
    never answers would hold the scheduler's lock forever; here the call fails, the pass
    says so (``Scheduler.last_pass_error``) and the next pass tries again.
    """

    def __init__(self, dashboard_url: str, timeout_s: float = 30.0):
        self.dashboard_url = dashboard_url.rstrip("/")
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, **kwargs):
        import httpx

        from orchestrator.scheduling.token import auth_headers

        try:
            return httpx.request(
                method,
                f"{self.dashboard_url}/api/jobs/{path}",
                headers=auth_headers(),
                timeout=self.timeout_s,
                **kwargs,
            )
        except httpx.HTTPError as exc:  # refused, reset, timed out
            raise RayUnavailable(f"{method} /api/jobs/{path}: {exc!r}") from None

    def submit(
        self, submission_id: str, entrypoint: str, env_vars: dict[str, str], metadata: dict
    ) -> bool:
        """Start a Ray job under ``submission_id``; False when that id already exists (a
        restart after the submit reached Ray: it must not start twice)."""
        reply = self._request(
            "POST",
            "",
            json={
                "entrypoint": entrypoint,
                "submission_id": submission_id,
                "runtime_env": {"env_vars": env_vars},
                "metadata": {k: str(v) for k, v in metadata.items()},
                "entrypoint_num_cpus": 0,
            },
        )
        if reply.status_code == 200:
            return True
        if reply.status_code in (400, 500) and "already exists" in reply.text:
            return False  # Ray 2.60's head answers 500 with the agent's "already exists"
        raise RayUnavailable(f"submitting {submission_id}: HTTP {reply.status_code}: "
                             f"{_last_line(reply.text)}")  # fmt: skip

    def status(self, submission_id: str) -> tuple[str | None, str]:
        """(Ray job status, its message); (None, '') when Ray has no such job."""
        reply = self._request("GET", submission_id)
        if reply.status_code == 404:
            return None, ""
        if reply.status_code != 200:
            raise RayUnavailable(f"status of {submission_id}: HTTP {reply.status_code}")
        info = reply.json()
        return str(info.get("status")), info.get("message") or ""

    def stop(self, submission_id: str) -> None:
        reply = self._request("POST", f"{submission_id}/stop")
        if reply.status_code not in (200, 404):
            raise RayUnavailable(f"stopping {submission_id}: HTTP {reply.status_code}")

    def logs(self, submission_id: str) -> str:
        try:
            reply = self._request("GET", f"{submission_id}/logs")
        except RayUnavailable:
            return ""
        return reply.json().get("logs", "") if reply.status_code == 200 else ""

    def undeploy(self, app: str) -> bool:
        """Take Serve application ``app`` down (the server is a Ray driver); False when it
        was not running."""
        from serve.deploy import undeploy

        return undeploy(app)

    def running(self) -> list[dict]:
        """Every Ray job not yet ended: submission id, status, metadata."""
        reply = self._request("GET", "")
        if reply.status_code != 200:
            raise RayUnavailable(f"listing jobs: HTTP {reply.status_code}")
        return [
            {k: job.get(k) for k in ("submission_id", "status", "metadata")}
            for job in reply.json()
            if job.get("status") not in TERMINAL_RAY_STATES
        ]

    def resources(self) -> ClusterResources:
        import ray

        try:
            nodes = [_plain(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive", False)]
            return ClusterResources(
                total=_plain(ray.cluster_resources()),
                available=_plain(ray.available_resources()),
                nodes=nodes,
            )
        except Exception as exc:
            raise RayUnavailable(f"cannot read the cluster's resources: {exc}") from None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"
