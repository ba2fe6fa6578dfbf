"""The one place that talks to Ray for the queue: the Jobs API and the cluster's resources.

Admitted jobs run as Ray Jobs (``ray job list``, ``ray job logs`` and the dashboard show
them). Free resources come from the GCS (``ray.available_resources``), i.e. what the
cluster really has free, not what jobs were told: a stopped job's workers keep their CPUs
until they exit, and admission must wait for that.
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
    """Jobs API (``JobSubmissionClient``; token headers from Ray's own token loader) and
    the cluster's resources (this process is a Ray driver)."""

    def __init__(self, dashboard_url: str):
        from ray.job_submission import JobSubmissionClient

        self.dashboard_url = dashboard_url
        self._client = JobSubmissionClient(dashboard_url)

    def submit(
        self, submission_id: str, entrypoint: str, env_vars: dict[str, str], metadata: dict
    ) -> bool:
        """Start a Ray job under ``submission_id``; False when that id already exists (a
        restart after the submit reached Ray: it must not start twice)."""
        try:
            self._client.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env={"env_vars": env_vars},
                metadata={k: str(v) for k, v in metadata.items()},
                entrypoint_num_cpus=0,
            )
            return True
        except RuntimeError as exc:
            if "already exists" in str(exc):
                return False
            raise RayUnavailable(str(exc)) from None

    def status(self, submission_id: str) -> tuple[str | None, str]:
        """(Ray job status, its message); (None, '') when Ray has no such job."""
        try:
            info = self._client.get_job_info(submission_id)
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return None, ""
            raise RayUnavailable(str(exc)) from None
        except Exception as exc:  # connection refused, timeouts
            raise RayUnavailable(str(exc)) from None
        return str(info.status), info.message or ""

    def stop(self, submission_id: str) -> None:
        try:
            self._client.stop_job(submission_id)
        except RuntimeError as exc:
            if "does not exist" not in str(exc):
                raise RayUnavailable(str(exc)) from None

    def logs(self, submission_id: str) -> str:
        try:
            return self._client.get_job_logs(submission_id)
        except RuntimeError:
            return ""

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
