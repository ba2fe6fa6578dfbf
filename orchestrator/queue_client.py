"""The SDK side of the job queue: talks to ``orch server`` over HTTP, starting it on first use.

from orchestrator import Client
client = Client("http://127.0.0.1:8265")     # a cluster's dashboard, as for `ray job submit`
job = client.submit("pipeline.yaml", priority="high")
job.wait(timeout=600); print(job.status, job.result().metrics)

Where the queue lives: ``$ORCH_HOME/queue/`` (default ``./.orch/queue/``): ``queue.db``
(SQLite), ``server.json`` (the running server's URL and PID), ``jobs/<id>/spec.yaml``.
Without an address, the embedded default is a Ray head of our own under
``$ORCH_HOME/cluster/`` (started once, token auth on, bound to 127.0.0.1).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from orchestrator.address import RayAddress
from orchestrator.exceptions import (
    ClusterError,
    JobFailedError,
    OrchestratorError,
    SpecError,
    first_line,
)
from orchestrator.home import orch_home
from orchestrator.scheduling.demand import Deployment
from orchestrator.scheduling.record import JobInfo
from orchestrator.scheduling.token import bearer_headers, ray_token
from serve.records import AliasMoved, ModelDetails, RegisteredModel

SERVER_START_TIMEOUT_S = 120


def queue_dir() -> Path:
    return orch_home() / "queue"


def _same_url(a: str, b: str) -> bool:
    norm = lambda u: u.rstrip("/").replace("localhost", "127.0.0.1")  # noqa: E731
    return norm(a) == norm(b)


def _trusted(path: Path) -> Path:
    """``path`` when this user wrote it: a ``server.json`` tells the client where to send
    the user's token, so one planted by someone else (a shared project folder, whose
    ``./.orch`` is the default home) must never be read. The file and every folder from
    the queue's home down to it must be owned by this user and writable by nobody else,
    and the address must be loopback (the server binds 127.0.0.1; one elsewhere is named
    with --server or $ORCH_SERVER).

    Raises:
        ClusterError: the file is someone else's, or names a non-loopback address.
    """
    from urllib.parse import urlsplit

    if not path.exists():
        return path
    for place in (path, path.parent, path.parent.parent):
        status = place.stat()
        if status.st_uid != os.geteuid() or status.st_mode & 0o022:
            raise ClusterError(
                f"{place} is not this user's alone (owner uid {status.st_uid}, mode "
                f"{status.st_mode & 0o777:o}): orch does not send your token where a file "
                "another user can write points; name the server with --server or $ORCH_SERVER"
            )
    try:
        host = urlsplit(json.loads(path.read_text()).get("url", "")).hostname
    except (ValueError, AttributeError):
        return path
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ClusterError(
            f"{path} names a server at {host}, not on this machine: name it with --server or "
            "$ORCH_SERVER if you mean it"
        )
    return path


class QueueClient:
    """HTTP client of the queue server of one cluster.

    Args:
        address: the cluster: its dashboard URL (http://host:8265, what `ray job submit`
            takes), "auto" or the GCS host:port; None = $RAY_ADDRESS when set, else the
            embedded local head. Never joins the cluster as a driver.
        start: start the server (as a Ray job on the cluster) when none answers.
    """

    def __init__(
        self,
        address: str | RayAddress | None = None,
        *,
        start: bool = True,
        server: str | None = None,
    ):
        from orchestrator.address import dashboard_url, given_address, recorded_head
        from orchestrator.scheduling.access import client_token

        self.state_dir = queue_dir()
        try:
            self._user_token = client_token()  # a queue user's token, when one is set
        except PermissionError as exc:
            raise ClusterError(str(exc)) from None
        server = server or os.environ.get("ORCH_SERVER")
        self._fixed_url = bool(server)
        if server:  # a member elsewhere: the server's URL (a tunnel), no Ray address
            self.dashboard_url, self._token, self._start = "", None, False
            self._url: str | None = server.rstrip("/")
            return
        if not isinstance(address, RayAddress):
            address = given_address(address)
        if address is None:
            from cluster.local import ensure_head

            head = ensure_head(self.state_dir.parent / "cluster")
            url, self._token = head.dashboard_url, head.token
        else:
            if address.kind == "auto":
                recorded_head()  # its token settings go into the env first
            self._token = ray_token()
            url = dashboard_url(address)
        self.dashboard_url = url.rstrip("/")
        self._start = start
        self._url: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """A queue user's token (``ORCH_TOKEN``, ``~/.orch/token``), else the Ray token."""
        return bearer_headers(self._user_token or self._token)

    # ------------------------------------------------------------- the server

    def _running_server(self) -> str | None:
        try:
            info = json.loads(_trusted(self.state_dir / "server.json").read_text())
        except (OSError, ValueError):
            return None
        if not _same_url(info.get("dashboard_url", ""), self.dashboard_url):
            raise ClusterError(
                f"the queue under {self.state_dir} belongs to the cluster at "
                f"{info.get('dashboard_url')}, not {self.dashboard_url}; use another ORCH_HOME "
                "or that address"
            )
        try:
            httpx.get(f"{info['url']}/healthz", timeout=3).raise_for_status()
        except httpx.HTTPError:
            return None
        return info["url"]

    def server_url(self) -> str:
        """The running server's URL; starts one as a Ray job when none answers."""
        if self._url:
            return self._url
        url = self._running_server()
        if url is None:
            if not self._start:
                raise ClusterError(f"no orch server answers for {self.state_dir}")
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with open(self.state_dir / "start.lock", "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time
                url = self._running_server() or self._start_server()
        self._url = url
        return url

    def _start_server(self) -> str:
        from ray.job_submission import JobSubmissionClient

        submission_id = f"orch-server-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        entrypoint = (
            f"{sys.executable} -m orchestrator server --state-dir {self.state_dir} --port 0"
        )
        try:
            ray_jobs = JobSubmissionClient(self.dashboard_url, headers=bearer_headers(self._token))
            ray_jobs.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                entrypoint_num_cpus=0,
                metadata={"orch": "queue server"},
                runtime_env={"env_vars": {"ORCH_SERVER_SUBMISSION_ID": submission_id}},
            )
        except Exception as exc:
            raise ClusterError(
                f"cannot start the orch server on {self.dashboard_url}: {first_line(exc)} Is "
                "Ray running there (`ray start --head`), and with token auth is "
                "RAY_AUTH_TOKEN_PATH set?"
            ) from None
        deadline = time.time() + SERVER_START_TIMEOUT_S
        while time.time() < deadline:
            url = self._running_server()
            if url:
                return url
            status = ray_jobs.get_job_status(submission_id)
            if str(status) in ("FAILED", "STOPPED", "SUCCEEDED"):
                tail = ray_jobs.get_job_logs(submission_id)[-2000:]
                raise ClusterError(f"the orch server exited ({status}): {tail}")
            time.sleep(0.3)
        raise ClusterError(f"the orch server did not answer within {SERVER_START_TIMEOUT_S} s")

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        url = self.server_url()
        try:
            reply = httpx.request(
                method, f"{url}{path}", headers=self.headers, timeout=60, **kwargs
            )
        except httpx.HTTPError as exc:
            if self._fixed_url:
                raise ClusterError(f"the orch server at {url} does not answer: {exc}") from None
            self._url = None  # the server went away: find or start it again
            url = self.server_url()
            reply = httpx.request(
                method, f"{url}{path}", headers=self.headers, timeout=60, **kwargs
            )
        if reply.status_code >= 400:
            try:
                detail = reply.json().get("detail", reply.text)
            except ValueError:
                detail = reply.text
            if not isinstance(detail, str):
                detail = json.dumps(detail)
            if reply.status_code == 400:
                raise SpecError(detail)
            raise OrchestratorError(detail)
        return reply

    # ------------------------------------------------------------- the API

    def submit(
        self,
        spec: str | Path,
        *,
        priority: str | int | None = None,
        name: str | None = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        if idempotency_key is None:
            # a retried POST (the first reply timed out) must not queue the job twice
            idempotency_key = f"auto-{uuid.uuid4().hex}"
        path = Path(spec)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"{path}: {exc.strerror or 'cannot read'}") from None
        env = {
            k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "DS_ACCELERATOR") if k in os.environ
        }
        env["ORCH_HOME"] = str(self.state_dir.parent)
        body = {
            "spec_text": text,
            "spec_path": str(path.resolve()),
            "cwd": str(Path.cwd()),
            "env": env,
            "name": name,
            "priority": priority,
            "queue": queue,
            "idempotency_key": idempotency_key,
        }
        info = JobInfo.model_validate(self._call("POST", "/jobs", json=body).json())
        return Job(self, info)

    def job(self, job_id: str) -> Job:
        return Job(self, self.info(job_id))

    def info(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate(self._call("GET", f"/jobs/{job_id}").json())

    def jobs(self, state: str | None = None) -> list[JobInfo]:
        params = {"state": state} if state else None
        return [JobInfo.model_validate(j) for j in self._call("GET", "/jobs", params=params).json()]

    def queue(self) -> list[tuple[int, JobInfo]]:
        """Queued jobs in admission order: (position, job); job.reason says why it waits."""
        entries = self._call("GET", "/queue").json()
        return [(e["position"], JobInfo.model_validate(e["job"])) for e in entries]

    def cancel(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate(self._call("POST", f"/jobs/{job_id}/cancel").json())

    def retry(self, job_id: str) -> Job:
        return Job(self, JobInfo.model_validate(self._call("POST", f"/jobs/{job_id}/retry").json()))

    def deployments(self) -> list[Deployment]:
        """The Serve applications this queue's finished jobs left running, each charged to
        its team until taken down."""
        reply = self._call("GET", "/deployments").json()
        return [Deployment.model_validate(d) for d in reply]

    def undeploy(self, app: str) -> Deployment:
        """Take ``app`` down (its owner or an admin); its team is charged no more."""
        return Deployment.model_validate(self._call("DELETE", f"/deployments/{app}").json())

    def logs(self, job_id: str) -> tuple[str, str]:
        """(state, the logs of every attempt so far)."""
        reply = self._call("GET", f"/jobs/{job_id}/logs").json()
        return reply["state"], reply["logs"]

    def cluster(self) -> dict:
        return self._call("GET", "/cluster").json()

    # ------------------------------------------------- the registry, through the server

    def list_models(self) -> list[RegisteredModel]:
        """Registered models in the server's store (as ``Client.list_models``)."""
        return [RegisteredModel.model_validate(m) for m in self._call("GET", "/models").json()]

    def show_model(self, name: str) -> ModelDetails:
        return ModelDetails.model_validate(self._call("GET", f"/models/{name}").json())

    def promote(self, name: str, version: str, alias: str = "champion") -> None:
        """Point ``name@alias`` at ``version``: takes the role the server's settings name."""
        body = {"version": str(version), "alias": alias}
        self._call("POST", f"/models/{name}/promote", json=body)

    def rollback(self, name: str, alias: str = "champion") -> AliasMoved:
        """Move ``name@alias`` back to its previous version."""
        moved = self._call("POST", f"/models/{name}/rollback", json={"alias": alias}).json()
        return AliasMoved.model_validate(moved)


class Job:
    """A handle on one queued job; ``info`` is its record as last fetched."""

    def __init__(self, client: QueueClient, info: JobInfo):
        self._client = client
        self.info = info

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.info.state!r})"

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        """The job's state, fetched now."""
        return self.refresh().state

    def refresh(self) -> JobInfo:
        self.info = self._client.info(self.id)
        return self.info

    def wait(self, timeout: float | None = None, poll_s: float = 1.0) -> JobInfo:
        """Block until the job ends.

        Raises:
            TimeoutError: still not ended after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.time() + timeout
        while not self.refresh().terminal:
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"{self.id} is still {self.info.state} after {timeout} s")
            time.sleep(poll_s)
        return self.info

    def result(self):
        """The pipeline's ``RunResult``.

        Raises:
            JobFailedError: the job failed or was cancelled (the message says why).
        """
        from orchestrator.results import RunResult

        info = self.refresh()
        if info.state != "succeeded" or not info.result:
            raise JobFailedError(f"{self.id} is {info.state}: {info.reason}")
        return RunResult.model_validate(info.result)

    def logs(self, follow: bool = False, poll_s: float = 1.0) -> Iterator[str]:
        """The job's log lines; with ``follow``, new lines as they come until the job ends."""
        seen = 0
        while True:
            state, text = self._client.logs(self.id)
            lines = text.splitlines()
            yield from lines[seen:]
            seen = len(lines)
            if not follow or state in ("succeeded", "failed", "cancelled"):
                if follow:  # the last lines may land after the state changed
                    _, text = self._client.logs(self.id)
                    yield from text.splitlines()[seen:]
                return
            time.sleep(poll_s)

    def cancel(self) -> JobInfo:
        self.info = self._client.cancel(self.id)
        return self.info

    def retry(self) -> Job:
        return self._client.retry(self.id)
