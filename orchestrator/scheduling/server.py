"""``orch server``: the queue's HTTP API and its scheduler, on the cluster's head node.

One server per state directory (an exclusive lock on ``server.lock``): two servers on one
queue could admit a job twice. It binds 127.0.0.1 unless told otherwise, asks for Ray's
bearer token when the cluster uses token auth, and writes ``server.json`` (its URL and
PID) once it answers, which is how clients find it.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from orchestrator.exceptions import SpecError
from orchestrator.scheduling.policy import PolicyConfig, create_policy
from orchestrator.scheduling.ray_jobs import RayJobs, RayUnavailable
from orchestrator.scheduling.record import JobInfo
from orchestrator.scheduling.scheduler import JobConflict, Scheduler, SubmitRequest, UnknownJob
from orchestrator.scheduling.store import JobStore, StoreVersionError
from orchestrator.scheduling.token import ray_token, token_required

log = logging.getLogger("orch.server")

SERVER_FILE = "server.json"
LOCK_FILE = "server.lock"
DB_FILE = "queue.db"


class QueueEntry(BaseModel):
    position: int
    job: JobInfo


class ServerInfo(BaseModel):
    url: str
    pid: int
    dashboard_url: str
    state_dir: str
    started_at: float
    ray_submission_id: str | None = None


def _authorize(request: Request) -> None:
    """Every call but /healthz carries the cluster's Ray token when token auth is on."""
    if not token_required():
        return
    expected = f"Bearer {ray_token() or ''}"
    given = request.headers.get("authorization", "")
    if not given:
        raise HTTPException(401, "missing the Ray token: send Authorization: Bearer <token>")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(403, "invalid Ray token")


_ERROR_STATUS = {SpecError: 400, UnknownJob: 404, JobConflict: 409}


def _add_error_handlers(app: FastAPI) -> None:
    """Our errors as their HTTP statuses with the message as ``detail``."""

    def answer(status: int):
        async def handler(request, exc):
            return JSONResponse(status_code=status, content={"detail": str(exc)})

        return handler

    for error, status in _ERROR_STATUS.items():
        app.add_exception_handler(error, answer(status))

    @app.exception_handler(RayUnavailable)
    async def _ray_down(request, exc: RayUnavailable):
        return JSONResponse(status_code=503, content={"detail": f"Ray is not answering: {exc}"})


def build_api(scheduler: Scheduler, info: ServerInfo) -> FastAPI:
    app = FastAPI(title="orch queue", version="1")
    _add_error_handlers(app)
    guarded = [Depends(_authorize)]

    @app.get("/healthz")
    def healthz() -> ServerInfo:
        return info

    @app.post("/jobs", dependencies=guarded, status_code=201)
    def submit(request: SubmitRequest) -> JSONResponse:
        job, created = scheduler.submit(request)
        return JSONResponse(status_code=201 if created else 200, content=job.model_dump())

    @app.get("/jobs", dependencies=guarded)
    def list_jobs(state: str | None = None, limit: int | None = None) -> list[JobInfo]:
        jobs = scheduler.store.all(limit)
        return [j for j in jobs if state is None or j.state == state]

    @app.get("/queue", dependencies=guarded)
    def queue() -> list[QueueEntry]:
        queued = scheduler.store.queued()
        ordered = scheduler.policy.order(queued, time.time())
        return [QueueEntry(position=i + 1, job=j) for i, j in enumerate(ordered)]

    @app.get("/jobs/{job_id}", dependencies=guarded)
    def get_job(job_id: str) -> JobInfo:
        return scheduler.get(job_id)

    @app.get("/jobs/{job_id}/logs", dependencies=guarded)
    def logs(job_id: str) -> dict:
        job = scheduler.get(job_id)
        return {"state": job.state, "logs": scheduler.logs(job_id)}

    @app.post("/jobs/{job_id}/cancel", dependencies=guarded)
    def cancel(job_id: str) -> JobInfo:
        return scheduler.cancel(job_id)

    @app.post("/jobs/{job_id}/retry", dependencies=guarded, status_code=201)
    def retry(job_id: str) -> JobInfo:
        return scheduler.retry(job_id)

    @app.get("/cluster", dependencies=guarded)
    def cluster() -> dict:
        resources = scheduler.ray.resources()
        return {
            **resources.model_dump(),
            "free_for_admission": scheduler.last_free,
            "last_pass_at": scheduler.last_pass_at,
            "last_pass_error": scheduler.last_pass_error,
            "pass_running_since": scheduler.pass_started_at,
            "ray_jobs_running": _running_or_error(scheduler),
        }

    return app


def _running_or_error(scheduler: Scheduler) -> list[dict] | str:
    try:
        return scheduler.ray.running()
    except RayUnavailable as exc:
        return f"unknown: {exc}"


def acquire_lock(state_dir: Path):
    """The server lock, or None when another server holds it."""
    handle = open(state_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def serve_forever(
    state_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ray_address: str | None = None,
    policy: PolicyConfig | None = None,
    poll_s: float = 1.0,
) -> int:
    """Run the queue server until SIGTERM/SIGINT. Returns an exit code."""
    import uvicorn

    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(state_dir)
    if lock is None:
        print(f"another orch server already serves {state_dir}", flush=True)
        return 0
    try:
        store = JobStore(state_dir / DB_FILE)
    except StoreVersionError as exc:
        print(f"error: {exc}", flush=True)
        lock.close()
        return 2
    dashboard_url = _connect(ray_address)
    scheduler = Scheduler(
        store, RayJobs(dashboard_url), create_policy("priority", policy), state_dir, poll_s=poll_s
    )
    sock = _listening_socket(host, port)
    bound = sock.getsockname()[1]
    info = ServerInfo(
        url=f"http://{host}:{bound}",
        pid=os.getpid(),
        dashboard_url=dashboard_url,
        state_dir=str(state_dir),
        started_at=time.time(),
        ray_submission_id=os.environ.get("ORCH_SERVER_SUBMISSION_ID"),
    )
    stop = threading.Event()
    config = uvicorn.Config(
        build_api(scheduler, info), log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)

    def schedule() -> None:
        scheduler.run(stop)
        server.should_exit = True  # the scheduler gave up (Ray gone): stop serving too

    loop = threading.Thread(target=schedule, name="orch-scheduler", daemon=True)
    loop.start()

    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        tmp = state_dir / f".{SERVER_FILE}.tmp"
        tmp.write_text(info.model_dump_json(indent=2))
        tmp.replace(state_dir / SERVER_FILE)
        print(f"orch server on {info.url} (queue {state_dir / DB_FILE})", flush=True)

    server.startup = startup
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        loop.join(timeout=10)
        store.close()
        _forget_server_file(state_dir)
        lock.close()
    return 0


def _connect(ray_address: str | None) -> str:
    """Join the cluster the queue runs jobs on; returns its dashboard URL."""
    import ray

    from orchestrator.address import gcs_address, given_address, parse_address

    target = gcs_address(given_address(ray_address) or parse_address("auto", "--address"))
    if target != "auto":
        os.environ["RAY_ADDRESS"] = target  # Ray reads it too: never a dashboard URL
    context = ray.init(
        address=target,
        logging_level="WARNING",
        log_to_driver=False,
        namespace="orch",
    )
    dashboard = context.dashboard_url or ""
    return dashboard if dashboard.startswith("http") else f"http://{dashboard}"


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _forget_server_file(state_dir: Path) -> None:
    """Remove server.json if it still names this process (a newer server may own it)."""
    try:
        current = json.loads((state_dir / SERVER_FILE).read_text())
        if current.get("pid") == os.getpid():
            (state_dir / SERVER_FILE).unlink()
    except (OSError, ValueError):
        pass
