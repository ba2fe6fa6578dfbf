"""The head's MLflow server with accounts: its secrets, made at first boot, then the server.

``python -m cluster.mlflow_auth --dir /data/orch/mlflow-auth -- mlflow server --app-name
basic-auth ...`` (``settings.MLFLOW_SERVER``) keeps everything MLflow's basic-auth app needs
in one folder only the server's user may enter (0700, every file 0600):

- ``admin_password``, ``flask_secret_key``: 256 random bits each, written once (the first
  boot) and read on every later one; never a value from the repository or the image;
- ``basic_auth.ini``: the app's settings (``MLFLOW_AUTH_CONFIG_PATH``): accounts in
  ``basic_auth.db`` beside it, the admin account ``admin`` (made with that password when
  ``basic_auth.db`` is new: to start over, remove both), ``default_permission = READ``
  (an account reads every experiment, run and model) and ``authenticate`` below as the
  check of each request, which refuses an account that is not an MLflow admin anything
  but reading. orch grants member accounts nothing: members' runs are written by the jobs
  the queue runs, which log in as the admin;
- ``credentials``: the admin's login in the format of MLflow's client credentials file
  (``~/.mlflow/credentials``). The cluster configs link the head's ``~/.mlflow/credentials``
  to it, so the queue server, the jobs it runs and ``orch users add`` on the head
  authenticate as the admin with nothing in their environment; ``MLFLOW_TRACKING_USERNAME``
  and ``MLFLOW_TRACKING_PASSWORD``, when set, win over it (MLflow's own rule).

The command after ``--`` then replaces this process, with ``MLFLOW_AUTH_CONFIG_PATH`` and
``MLFLOW_FLASK_SERVER_SECRET_KEY`` in its environment.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

ADMIN_USERNAME = "admin"
READ_METHODS = ("GET", "HEAD", "OPTIONS")
AUTH_CACHE_TTL_S = 60
"""How long the server keeps a checked login: without it every request (each metric a job
logs) pays a scrypt hash. With the one worker the configs run, deleting an account or
changing a password through MLflow's API drops it from the cache at once."""
DEFAULT_PERMISSION = "READ"
"""What an account may do where it holds no grant: read (``authenticate`` keeps it to that:
MLflow alone would still let it create an experiment or a model, and own it)."""


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole, mode 0600 from the first byte."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(partial, path)


def _secret(path: Path) -> str:
    """The secret kept in ``path``, made now (256 random bits) if there is none yet."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)  # a copy restored with looser bits is closed again
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    value = path.read_text().strip()
    if not value:
        raise SystemExit(f"{path} is empty: remove it to make a new one")
    return value


def prepare(folder: Path) -> dict[str, str]:
    """Make (first boot) or read the secrets in ``folder`` and write the app's settings and
    the admin's client credentials; returns the server's extra environment.

    Args:
        folder: where the secrets and the accounts database live (created 0700).

    Returns:
        ``MLFLOW_AUTH_CONFIG_PATH`` and ``MLFLOW_FLASK_SERVER_SECRET_KEY`` for the server.
    """
    folder = folder.resolve()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    password = _secret(folder / "admin_password")
    settings = folder / "basic_auth.ini"
    _write_private(
        settings,
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN_USERNAME}\n"
        f"admin_password = {password}\n"
        "authorization_function = cluster.mlflow_auth:authenticate\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n",
    )
    _write_private(
        folder / "credentials",
        "[mlflow]\n"
        f"mlflow_tracking_username = {ADMIN_USERNAME}\n"
        f"mlflow_tracking_password = {password}\n",
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(settings),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(folder / "flask_secret_key"),
    }


def _reads(method: str, path: str) -> bool:
    """True for a request that only reads: any GET, and the POSTs MLflow reads with (its
    searches, and GraphQL queries, which MLflow authorizes per object)."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return method in READ_METHODS or (
        method == "POST" and (last.startswith("search") or last == "graphql")
    )


def authenticate():
    """The server's ``authorization_function``: MLflow's basic auth, then an account that is
    not an MLflow admin only reads (403 on anything else).

    MLflow's basic-auth app lets any account create an experiment or a registered model
    when workspaces are off (and orch's jobs name their experiments' artifact location,
    which workspaces refuse), and makes its creator the owner (MANAGE). A member could then
    take a name the team's jobs later log or register into (``nlp-iris``) and move its
    aliases. So a member's account reads and nothing else, whatever its grants; writes are
    the admin's account's, which the queue server and the jobs it runs hold.

    Returns:
        MLflow's ``Authorization`` for the caller, or the 401/403 response to send.
    """
    from flask import request
    from mlflow.server.auth import (
        authenticate_request_basic_auth,
        make_forbidden_response,
        store,
    )
    from werkzeug.datastructures import Authorization

    answer = authenticate_request_basic_auth()
    if not isinstance(answer, Authorization) or _reads(request.method, request.path):
        return answer
    if store.get_user(answer.username).is_admin:
        return answer
    return make_forbidden_response()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.mlflow_auth",
        description="make the MLflow server's secrets (first boot), then run the server",
    )
    parser.add_argument("--dir", required=True, type=Path, help="the secrets' folder (0700)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- mlflow server ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the server's command after --")
    env = {**os.environ, **prepare(args.dir)}
    sys.stdout.flush()
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
