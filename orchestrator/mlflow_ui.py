"""The MLflow UI on the embedded store, bound to 127.0.0.1 by default (``orch ui``,
``Client.ui``).

``--read-only`` is how members of a shared queue see MLflow: the UI opens the store through
a read-only SQLite connection (``mode=ro``) and serves no artifact uploads, so nothing a
member does through it can change a run, a model or an artifact (MLflow answers a write
with an error; the database refuses it). Members reach it through an SSH tunnel, like the
queue server.

Once the queue has users (``orch users add``), the read-only UI asks for one: HTTP Basic
authentication with an orch user's name and that user's orch token as the password,
checked on every request against the queue's ``queue.db`` (opened read-only), so a revoked
user is refused on the next request. MLflow's app then runs inside this process behind
that check (``QueueUserGate``) on the one port it listens on; there is no second port to
reach it around the check. With no user (a laptop), ``orch ui --read-only`` is ``mlflow ui``
as before."""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import shutil
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from orchestrator.exceptions import OrchestratorError, UsageError

OPEN_PATHS = ("/health",)
"""Answered without credentials: liveness only, no data."""
REALM = 'Basic realm="orch ui (your orch user name; password: your orch token)", charset="UTF-8"'


def read_only_uri(tracking_uri: str) -> str:
    """The SQLite store ``tracking_uri`` opened read-only (SQLite refuses every write).

    Raises:
        UsageError: not a SQLite file store, or the file does not exist yet.
    """
    if not tracking_uri.startswith("sqlite:///"):
        raise UsageError(
            f"--read-only serves a SQLite store, not {tracking_uri}: a tracking server gives "
            "read-only access through its own accounts (mlflow server --app-name basic-auth "
            "with default_permission = READ; `orch users add` makes members' accounts there)"
        )
    path = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    if not path.is_file():
        raise UsageError(f"--read-only: no MLflow store at {path} yet (run a pipeline first)")
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def ui_command(host: str = "127.0.0.1", port: int = 5000, read_only: bool = False) -> list[str]:
    """The ``mlflow ui`` command line for the embedded store and its artifacts; with
    ``read_only`` on a queue that has users, ``python -m orchestrator.mlflow_ui`` instead
    (the same UI, asking for a queue user: ``serve_read_only``).

    Raises:
        OrchestratorError: the ``mlflow`` command is not installed in this environment.
        UsageError: ``read_only`` on a store it cannot open read-only (``read_only_uri``).
    """
    from orchestrator.queue_client import queue_dir
    from orchestrator.runtime import artifact_root, default_tracking_uri

    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
    if mlflow is None:
        raise OrchestratorError("the mlflow command is not installed in this environment")
    store = default_tracking_uri()
    if read_only:
        store = read_only_uri(store)
        queue_db = queue_dir() / "queue.db"
        if queue_users(queue_db) is not None:  # a shared queue: the UI asks for a user
            return [
                sys.executable, "-m", "orchestrator.mlflow_ui",
                "--backend-store-uri", store,
                "--default-artifact-root", artifact_root().as_uri(),
                "--host", host, "--port", str(port),
                "--queue-db", str(queue_db),
            ]  # fmt: skip
    return [
        mlflow, "ui",
        "--backend-store-uri", store,
        "--default-artifact-root", artifact_root().as_uri(),
        "--host", host,
        "--port", str(port),
        "--workers", "1",
        *(["--no-serve-artifacts"] if read_only else []),
    ]  # fmt: skip


def queue_users(queue_db: Path):
    """The users of the queue at ``queue_db``, read through a read-only connection (the UI
    never writes the queue's file); None when it has none (no file, or no user yet).

    Returns:
        ``orchestrator.scheduling.identity.Identities`` on that connection, or None.
    """
    from orchestrator.scheduling.identity import Identities

    if not queue_db.is_file():
        return None
    db = sqlite3.connect(
        f"{queue_db.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
    )
    try:
        identities = Identities(db, threading.RLock())
        if identities.enforced():
            return identities
    except sqlite3.OperationalError:  # a queue.db from before users: it has none
        pass
    db.close()
    return None


def user_check(identities) -> Callable[[str, str], bool]:
    """``check(name, token)``: True when ``token`` is live user ``name``'s (a revoked user,
    another user's token or a malformed one: False)."""

    def check(name: str, token: str) -> bool:
        user = identities.authenticate(token)
        return user is not None and hmac.compare_digest(user.name.encode(), name.encode())

    return check


def basic_credentials(headers: list[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """(user name, password) of an ``Authorization: Basic`` header; None without one, or
    with one that does not decode."""
    for key, value in headers:
        if key.lower() != b"authorization":
            continue
        scheme, _, encoded = value.decode("latin-1").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, sep, password = (
                base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (name, password) if sep else None
    return None


class QueueUserGate:
    """ASGI middleware in front of MLflow's app: every request but ``OPEN_PATHS`` needs
    HTTP Basic credentials of a live queue user (``check(name, token)``); others get 401
    with ``WWW-Authenticate: Basic`` (a browser then asks for them) and never reach MLflow."""

    def __init__(self, app, check: Callable[[str, str], bool]):
        self.app = app
        self.check = check

    async def __call__(self, scope, receive, send) -> None:
        import anyio

        if scope["type"] not in ("http", "websocket") or (
            scope["type"] == "http" and scope["path"] in OPEN_PATHS
        ):
            await self.app(scope, receive, send)
            return
        given = basic_credentials(scope.get("headers", []))
        if given is not None and await anyio.to_thread.run_sync(self.check, *given):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = (
            b'{"error_code": "UNAUTHENTICATED", "message": "log in with your orch user name '
            b'and, as the password, your orch token"}'
        )
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", REALM.encode()),
            ],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def serve_read_only(store: str, artifact_root: str, host: str, port: int, queue_db: Path):
    """Serve MLflow's UI and API on ``store`` (a read-only URI, ``read_only_uri``) at
    host:port, behind ``QueueUserGate`` for the users of ``queue_db``; returns when stopped.

    What ``mlflow ui --no-serve-artifacts`` sets up, in this process: the stores from
    MLflow's server settings (the environment variables ``mlflow server`` passes its
    workers), then its FastAPI app, under uvicorn.

    Raises:
        UsageError: the queue at ``queue_db`` has no users (plain ``mlflow ui`` serves it).
    """
    import uvicorn

    identities = queue_users(queue_db)
    if identities is None:
        raise UsageError(f"{queue_db} has no queue users: run `orch ui --read-only` instead")
    from mlflow.server import (
        ARTIFACT_ROOT_ENV_VAR,
        BACKEND_STORE_URI_ENV_VAR,
        REGISTRY_STORE_URI_ENV_VAR,
    )

    os.environ.update({
        BACKEND_STORE_URI_ENV_VAR: store,
        REGISTRY_STORE_URI_ENV_VAR: store,
        ARTIFACT_ROOT_ENV_VAR: artifact_root,
        "MLFLOW_ENABLE_WORKSPACES": "false",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    })  # fmt: skip
    from mlflow.server.fastapi_app import app
    from mlflow.server.handlers import initialize_backend_stores

    initialize_backend_stores(store, store, artifact_root)
    gate = QueueUserGate(app, user_check(identities))
    uvicorn.run(gate, host=host, port=port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestrator.mlflow_ui``: what ``orch ui --read-only`` runs on a queue
    with users (``ui_command`` builds the command line)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m orchestrator.mlflow_ui")
    for flag in ("--backend-store-uri", "--default-artifact-root", "--host", "--queue-db"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        serve_read_only(
            args.backend_store_uri, args.default_artifact_root, args.host, args.port,
            Path(args.queue_db),
        )  # fmt: skip
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
