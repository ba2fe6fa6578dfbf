"""Who calls the queue server, and what they may see and do.

- No user configured (a laptop): the caller is the local admin; the cluster's Ray token
  guards the server when the cluster uses token auth, as before users existed.
- Users configured: every call carries a user's token (``ORCH_TOKEN`` or ``~/.orch/token``);
  the cluster's Ray token still works and makes its holder an admin (admins hold it; the
  server submits members' jobs with it, so members never need it).
- A member submits, and cancels, retries and reads the logs and results of their own jobs;
  others' jobs show in the queue with their position and demand but not their spec, working
  directory, environment, result or logs. A viewer only looks. An admin may do everything.
- Registry changes (promote, rollback, and deploys: a job spec with a ``serve`` section) take
  the role the server's settings name (``orch server --registry-role``, admin by default),
  never anything in a spec; a member changes only their team's models (``<team>-...``). A
  member's run still registers its own versions and moves the alias by its
  ``register.promote_if``, inside the team's names: that is the run's result, not a change
  to what others serve. Everyone may read the registry.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from pydantic import BaseModel, Field

from orchestrator.scheduling.boundary import team_owns
from orchestrator.scheduling.identity import LOCAL_ADMIN, TOKEN, Identities, Role, User
from orchestrator.scheduling.record import JobInfo
from orchestrator.scheduling.token import ray_token, token_required

TOKEN_ENV = "ORCH_TOKEN"
RANK = {"viewer": 0, "member": 1, "admin": 2}


class AccessConfig(BaseModel):
    """What the server's settings decide about who may do what (``orch server`` flags)."""

    registry_role: Role = Field(
        "admin",
        description="The least role that may promote, roll back and deploy models (a member "
        "only its team's).",
    )
    non_preemptible_role: Role = Field(
        "admin",
        description="The least role whose jobs may say scheduling.preemptible: false (a job "
        "nobody may preempt holds its resources against every higher priority).",
    )
    max_spec_bytes: int = Field(
        2**20,
        ge=1024,
        description="The largest spec a submit may carry, in bytes (a larger one is 413).",
    )


class Unauthenticated(Exception):
    """No usable token (HTTP 401)."""


class Forbidden(Exception):
    """The caller may not do this (HTTP 403); the message says why."""


def _bearer(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _is_ray_token(token: str) -> bool:
    expected = ray_token() or ""
    return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())


def caller(identities: Identities, authorization: str) -> User:
    """The user behind an ``Authorization`` header.

    Raises:
        Unauthenticated: no token, or one that is malformed, unknown or revoked.
    """
    token = _bearer(authorization)
    if not identities.enforced():
        if token_required() and not _is_ray_token(token):
            raise Unauthenticated(
                "missing or wrong Ray token: send Authorization: Bearer <the cluster's token>"
            )
        return LOCAL_ADMIN
    if not token:
        raise Unauthenticated(
            f"this queue has users: send your token (Authorization: Bearer <token>; the CLI "
            f"and SDK read ${TOKEN_ENV} or ~/.orch/token)"
        )
    user = identities.authenticate(token)
    if user is not None:
        return user
    if _is_ray_token(token):
        return LOCAL_ADMIN
    if not TOKEN.match(token):
        raise Unauthenticated(
            "malformed token: an orch token is orch_<8 hex>_<43 characters>, as orch users add "
            f"printed it (check ${TOKEN_ENV} or ~/.orch/token for a cut or extra character)"
        )
    raise Unauthenticated("unknown or revoked token; ask an admin for one (orch users add)")


def check_submit(user: User) -> None:
    if user.role == "viewer":
        raise Forbidden(f"{user.name} is a viewer: viewers see the queue but submit nothing")


def check_non_preemptible(user: User, config: AccessConfig) -> None:
    """``user`` may submit a job with ``scheduling.preemptible: false``."""
    if RANK[user.role] < RANK[config.non_preemptible_role]:
        raise Forbidden(
            f"scheduling.preemptible: false: {user.name} is a {user.role}, and a job nobody "
            f"may preempt takes role {config.non_preemptible_role} on this server; leave it "
            "true (the default), or ask an admin (orch server --non-preemptible-role)"
        )


def check_registry(user: User, model: str, config: AccessConfig, action: str) -> None:
    """``user`` may ``action`` (promote, roll back, deploy) registered model ``model``."""
    if RANK[user.role] < RANK[config.registry_role]:
        raise Forbidden(
            f"{user.name} is a {user.role}: to {action} a model takes role "
            f"{config.registry_role} on this server (its admin sets orch server --registry-role)"
        )
    if not user.admin and not team_owns(user.team, model):
        raise Forbidden(
            f"{model!r} is not team {user.team}'s: a member may {action} only models named "
            f"{user.team}-..."
        )


def check_owner(user: User, job: JobInfo, action: str) -> None:
    """Only the job's owner or an admin may ``action`` it."""
    check_owner_of(user, job.id, job.owner, job.team, action)


def check_owner_of(user: User, thing: str, owner: str, team: str, action: str) -> None:
    """Only ``owner`` (of ``team``) or an admin may ``action`` ``thing`` (a job, a Serve
    application a job left running)."""
    if user.admin or owner == user.name:
        return
    raise Forbidden(
        f"{thing} belongs to {owner} (team {team}); only its owner or an admin may {action} it"
    )


def visible(user: User, job: JobInfo) -> JobInfo:
    """The job as ``user`` may see it: others' jobs without what they submitted or got."""
    if user.admin or job.owner == user.name:
        return job
    return job.model_copy(
        update={
            "spec_text": "",
            "spec_path": "",
            "cwd": "",
            "env": {},
            "idempotency_key": None,
            "result": None,
            "reason": job.reason if job.state == "queued" else "",
            "history": [],
        }
    )


def client_token() -> str | None:
    """The user's token for the CLI and SDK: $ORCH_TOKEN, else ``~/.orch/token``.

    Raises:
        PermissionError: the token file is readable by other users (it is a password).
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = Path.home() / ".orch" / "token"
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & 0o077:
        raise PermissionError(
            f"{path} can be read by other users (mode {mode & 0o777:o}); chmod 600 {path}"
        )
    return path.read_text().strip() or None
