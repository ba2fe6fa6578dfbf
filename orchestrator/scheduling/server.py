"""``orch server``: the queue's HTTP API and its scheduler, on the cluster's head node.

One server per state directory (an exclusive lock on ``server.lock``): two servers on one
queue could admit a job twice. It binds 127.0.0.1 unless told otherwise, asks for Ray's
bearer token when the cluster uses token auth, and writes ``server.json`` (its URL and
PID) once it answers, which is how clients find it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from orchestrator.exceptions import SpecError, SpecTooLarge
from orchestrator.scheduling.access import (
    AccessConfig,
    Forbidden,
    Unauthenticated,
    caller,
    check_owner,
    check_owner_of,
    check_registry,
    check_submit,
    visible,
)
from orchestrator.scheduling.boundary import OutsideBoundary
from orchestrator.scheduling.demand import Deployment
from orchestrator.scheduling.identity import User
from orchestrator.scheduling.policy import PolicyConfig, create_policy
from orchestrator.scheduling.ray_jobs import RayJobs, RayUnavailable
from orchestrator.scheduling.record import JobInfo, JobState
from orchestrator.scheduling.scheduler import (
    JobConflict,
    QuotaRefused,
    Scheduler,
    SubmitRequest,
    UnknownJob,
)
from orchestrator.scheduling.store import JobStore, StoreVersionError
from serve.records import ModelDetails, RegisteredModel

log = logging.getLogger("orch.server")

SERVER_FILE = "server.json"
LOCK_FILE = "server.lock"
DB_FILE = "queue.db"


class QueueEntry(BaseModel):
    position: int
    job: JobInfo


class Health(BaseModel):
    """``GET /healthz`` without a token: that it answers, and nothing about it."""

    ok: bool = True


class ServerInfo(BaseModel):
    url: str
    pid: int
    dashboard_url: str
    state_dir: str
    started_at: float
    ray_submission_id: str | None = None


_ERROR_STATUS = {
    SpecTooLarge: 413,
    SpecError: 400,
    UnknownJob: 404,
    JobConflict: 409,
    QuotaRefused: 403,
    OutsideBoundary: 403,
    Forbidden: 403,
}


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


MAX_LISTED = 100_000
"""The most jobs one ``GET /jobs?limit=`` asks for."""


class BodyLimit:
    """Refuse a request body over ``max_bytes`` with 413 before any handler reads it: by
    its Content-Length, or, sent without one (chunked), once that many bytes arrived."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        if declared is not None:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:  # no length given: read it here, up to the limit, then replay it
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(send)
        replayed = {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, _replay([replayed], receive), send)

    async def _refuse(self, send) -> None:
        why = (
            f"the request body is over this server's limit of {self.max_bytes:,} bytes "
            "(orch server --max-spec-bytes)"
        )
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps({"detail": why}).encode()})


def _replay(messages: list[dict], then=None):
    """An ASGI ``receive`` that gives ``messages`` first, then defers to ``then``."""
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        return await then() if then else {"type": "http.disconnect"}

    return receive


class CallGate:
    """The API's door: names each call's user (``access.caller``) and writes every
    state-changing call of a known user, refused or not, to the audit trail.

    A call without a valid token is refused before anything is written: no audit row (a
    flood of them would fill the disk), only a warning in the server's log, rate-limited
    per source address and overall (``refusals.RefusalLog``)."""

    def __init__(self, scheduler: Scheduler):
        from orchestrator.scheduling.refusals import RefusalLog

        self.identities = scheduler.store.identities
        self.audit = scheduler.store.audit
        self.unauthenticated = RefusalLog(log)

    def record(self, request: Request, user: User, action: str, target: str, outcome="ok"):
        client = request.client.host if request.client else "-"
        self.audit.append(user=user.name, team=user.team, action=action, target=target,
                          address=client, outcome=outcome)  # fmt: skip

    def who(self, request: Request) -> User:
        """FastAPI dependency: the caller, or 401 (logged, rate-limited; never audited)."""
        try:
            return caller(self.identities, request.headers.get("authorization", ""))
        except Unauthenticated as exc:
            client = request.client.host if request.client else "-"
            what = f"an unauthenticated {request.method} {request.url.path!r} (401: {exc})"
            self.unauthenticated.refused(client, what)
            raise HTTPException(401, str(exc)) from None

    def refused(self, request: Request, user: User, action: str, target: str, exc) -> None:
        """Record a call our own error refused (its HTTP status from ``_ERROR_STATUS``)."""
        status = _ERROR_STATUS.get(type(exc), 400)
        self.record(request, user, action, target, f"refused ({status}): {exc}")

    def allow(self, request: Request, user: User, action: str, target: str, check) -> None:
        """Run ``check``; a Forbidden becomes a recorded 403 and nothing changes."""
        try:
            check()
        except Forbidden as exc:
            self.record(request, user, action, target, f"refused (403): {exc}")
            raise HTTPException(403, str(exc)) from None


def build_api(scheduler: Scheduler, info: ServerInfo) -> FastAPI:
    """The queue's HTTP API; ``CallGate`` says who calls and records what changes."""
    app = FastAPI(title="orch queue", version="1")
    limits = scheduler.access
    # a body is the spec (JSON-escaped: up to twice its bytes) and a few small fields
    app.add_middleware(BodyLimit, max_bytes=2 * limits.max_spec_bytes + 64 * 1024)
    _add_error_handlers(app)
    gate = CallGate(scheduler)
    who, record, allowed = gate.who, gate.record, gate.allow
    _add_health_routes(app, gate, info)

    @app.post("/jobs", status_code=201)
    def submit(body: SubmitRequest, request: Request, user: User = Depends(who)) -> JSONResponse:
        allowed(request, user, "submit", body.spec_path, lambda: check_submit(user))
        try:
            job, created = scheduler.submit(body, user)
        except (SpecError, QuotaRefused, OutsideBoundary, Forbidden) as exc:
            gate.refused(request, user, "submit", body.spec_path, exc)
            raise
        if created:
            record(request, user, "submit", job.id)
        return JSONResponse(status_code=201 if created else 200, content=job.model_dump())

    @app.get("/jobs")
    def list_jobs(
        state: JobState | None = None,
        limit: int | None = Query(None, ge=1, le=MAX_LISTED, description="The newest N jobs."),
        user: User = Depends(who),
    ) -> list[JobInfo]:
        jobs = scheduler.store.all(limit)
        return [visible(user, j) for j in jobs if state is None or j.state == state]

    @app.get("/queue")
    def queue(user: User = Depends(who)) -> list[QueueEntry]:
        store = scheduler.store
        ordered = scheduler.policy.order(
            store.queued(), time.time(), store.active(), scheduler.last_total
        )
        return [QueueEntry(position=i + 1, job=visible(user, j)) for i, j in enumerate(ordered)]

    @app.get("/jobs/{job_id}")
    def get_job(job_id: str, user: User = Depends(who)) -> JobInfo:
        return visible(user, scheduler.get(job_id))

    @app.get("/jobs/{job_id}/logs")
    def logs(job_id: str, user: User = Depends(who)) -> dict:
        job = scheduler.get(job_id)
        try:
            check_owner(user, job, "read the logs of")
        except Forbidden as exc:
            raise HTTPException(403, str(exc)) from None
        return {"state": job.state, "logs": scheduler.logs(job_id)}

    @app.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str, request: Request, user: User = Depends(who)) -> JobInfo:
        job = scheduler.get(job_id)
        allowed(request, user, "cancel", job_id, lambda: check_owner(user, job, "cancel"))
        cancelled = scheduler.cancel(job_id)
        record(request, user, "cancel", job_id)
        return cancelled

    @app.post("/jobs/{job_id}/retry", status_code=201)
    def retry(job_id: str, request: Request, user: User = Depends(who)) -> JobInfo:
        job = scheduler.get(job_id)
        allowed(request, user, "retry", job_id, lambda: check_owner(user, job, "retry"))
        again = scheduler.retry(job_id)
        record(request, user, "retry", job_id, f"ok: {again.id}")
        return again

    @app.get("/cluster")
    def cluster(user: User = Depends(who)) -> dict:
        return _cluster_view(scheduler)

    _add_deployment_routes(app, gate, scheduler)

    _add_registry_routes(app, gate, scheduler)
    return app


def _add_deployment_routes(app: FastAPI, gate: CallGate, scheduler: Scheduler) -> None:
    """The Serve applications finished jobs left running: each is charged to its team until
    its owner or an admin takes it down here (audited)."""

    @app.get("/deployments")
    def deployments(user: User = Depends(gate.who)) -> list[Deployment]:
        return scheduler.store.deployments()

    @app.delete("/deployments/{app_name}")
    def undeploy(app_name: str, request: Request, user: User = Depends(gate.who)) -> Deployment:
        d = scheduler.deployment(app_name)
        owns = lambda: check_owner_of(user, app_name, d.owner, d.team, "undeploy")  # noqa: E731
        gate.allow(request, user, "undeploy", app_name, owns)
        taken = scheduler.undeploy(app_name)
        gate.record(request, user, "undeploy", app_name)
        return taken


def _add_health_routes(app: FastAPI, gate: CallGate, info: ServerInfo) -> None:
    """``/healthz`` for anyone (that it answers, nothing more) and ``/server`` for callers
    (where it runs: state directory, PID, the Ray dashboard)."""

    @app.get("/healthz")
    def healthz() -> Health:
        return Health()

    @app.get("/server")
    def server(user: User = Depends(gate.who)) -> ServerInfo:
        return info


class PromoteRequest(BaseModel):
    version: str = Field(pattern=r"^[0-9]+$", description="The version the alias moves to.")
    alias: str = Field("champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class RollbackRequest(BaseModel):
    alias: str = Field("champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def _add_registry_routes(app: FastAPI, gate: CallGate, scheduler: Scheduler) -> None:
    """The model registry through the server (its own store, where members' queued runs
    register): anyone reads it; a promote or rollback takes the role the server's settings
    name (a member only its team's models), and is audited."""
    from serve.registry import Registry, RegistryError

    access = scheduler.access

    def _registry() -> Registry:
        return Registry(scheduler.tracking_uri())

    @app.exception_handler(RegistryError)
    async def _cannot(request, exc: RegistryError):
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.get("/models")
    def models(user: User = Depends(gate.who)) -> list[RegisteredModel]:
        return _registry().models()

    @app.get("/models/{name}")
    def model(name: str, user: User = Depends(gate.who)) -> ModelDetails:
        return _registry().show(name)

    def change(request: Request, user: User, action: str, name: str, call) -> dict:
        gate.allow(request, user, f"models.{action}", name,
                   lambda: check_registry(user, name, access, action))  # fmt: skip
        try:
            outcome = call(_registry())
        except RegistryError as exc:
            gate.record(request, user, f"models.{action}", name, f"refused (409): {exc}")
            raise
        gate.record(request, user, f"models.{action}", name, f"ok: {json.dumps(outcome)}")
        return outcome

    @app.post("/models/{name}/promote")
    def promote(
        name: str, body: PromoteRequest, request: Request, user: User = Depends(gate.who)
    ) -> dict:
        def call(registry) -> dict:
            registry.promote(name, body.version, body.alias)
            return {"alias": body.alias, "version": body.version}

        return change(request, user, "promote", name, call)

    @app.post("/models/{name}/rollback")
    def rollback(
        name: str, body: RollbackRequest, request: Request, user: User = Depends(gate.who)
    ) -> dict:
        def call(registry) -> dict:
            return registry.rollback(name, body.alias).model_dump()

        return change(request, user, "rollback", name, call)


def _cluster_view(scheduler: Scheduler) -> dict:
    """``GET /cluster``: Ray's resources and the scheduler's last pass."""
    return {
        **scheduler.ray.resources().model_dump(),
        "free_for_admission": scheduler.last_free,
        "last_pass_at": scheduler.last_pass_at,
        "last_pass_error": scheduler.last_pass_error,
        "pass_running_since": scheduler.pass_started_at,
        "ray_jobs_running": _running_or_error(scheduler),
    }


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
    access: AccessConfig | None = None,
) -> int:
    """Run the queue server until SIGTERM/SIGINT. Returns an exit code."""
    import uvicorn

    from orchestrator.home import private_umask

    private_umask()  # all it writes (queue.db, job folders, server.json) is its user's only
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
        store,
        RayJobs(dashboard_url),
        create_policy("priority", policy),
        state_dir,
        poll_s=poll_s,
        access=access,
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

    _announce_once_listening(server, info, state_dir)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the
    # handler it found: with the default one the process would die before the cleanup
    # below (server.json left behind, the store not closed). Ours ends it in order.
    signal.signal(signal.SIGTERM, _exit_in_order)
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        loop.join(timeout=10)
        store.close()
        _forget_server_file(state_dir)
        lock.close()
    return 0


def _announce_once_listening(server, info: ServerInfo, state_dir: Path) -> None:
    """Write ``server.json`` (how clients find the server) once ``server`` answers."""
    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        tmp = state_dir / f".{SERVER_FILE}.tmp"
        tmp.write_text(info.model_dump_json(indent=2))
        tmp.replace(state_dir / SERVER_FILE)
        print(f"orch server on {info.url} (queue {state_dir / DB_FILE})", flush=True)

    server.startup = startup


def _exit_in_order(signum, frame) -> None:
    raise SystemExit(0)


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
