"""The queue's users, teams and audit trail, for an admin on the head: the SDK under
``orch users | teams | audit`` (``Client.admin``).

They open ``queue.db`` directly (as ``orch server`` does), so they work whether or not
the server runs. Every change goes into the audit trail as the operating-system user who
made it; a refused change (an unknown team, a bad name, the last admin) is audited, then
raised as ``SpecError`` naming it. A user's MLflow account (on a tracking server with
accounts) is made or closed with the user; what happened to it is audited too and comes
back in the result (``mlflow_account``), since the user's change stands either way.

    admin = Client().admin()
    made = admin.add_user("ana", team="vision", role="member")
    print(made.user.token)                       # shown once
    admin.set_team("vision", roots=["/data/vision"], cpus=8)
    print([e.action for e in admin.audit(since_hours=1)])
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, Field

from orchestrator.exceptions import SpecError
from orchestrator.scheduling.audit import AuditEntry, Verification
from orchestrator.scheduling.identity import IdentityError, NewUser, Quota, Team, User
from orchestrator.scheduling.mlflow_accounts import AccountChange


class UserAdded(BaseModel):
    """``QueueAdmin.add_user``: the user with its token (shown once)."""

    user: NewUser
    first: bool = Field(description="The first user: every queue call now needs a token.")
    mlflow_account: AccountChange | None = Field(
        None, description="The user's MLflow account, on a tracking server with accounts."
    )


class UserRevoked(BaseModel):
    """``QueueAdmin.revoke_user``: the user, its token revoked now."""

    user: User
    mlflow_account: AccountChange | None = None


class QueueAdmin:
    """An admin's view of one queue's users, teams and audit trail (``queue.db`` under
    ``state_dir``, default ``$ORCH_HOME/queue``)."""

    def __init__(self, state_dir: str | Path | None = None):
        from orchestrator.queue_client import queue_dir

        self.path = Path(state_dir or queue_dir()) / "queue.db"

    # ------------------------------------------------------------------------ users

    def users(self) -> list[User]:
        """Every user (never a token)."""
        with self._store() as store:
            return store.identities.users()

    def add_user(self, name: str, team: str, role: str = "member") -> UserAdded:
        """Create a user in ``team`` with ``role`` (admin | member | viewer).

        Raises:
            SpecError: an unknown team or role, a bad or taken name.
        """
        from orchestrator.scheduling import mlflow_accounts

        accounts = mlflow_accounts.accounts_for_new_user(name)  # checked before the user
        with self._changing("users.add", name) as store:
            first = not store.identities.enforced()
            made = store.identities.add_user(name, team, role)
            _audit(store, "users.add", name, f"role {role}, team {team}")
            account = accounts.create(name, made.token) if accounts else None
            _audit_account(store, account)
        return UserAdded(user=made, first=first, mlflow_account=account)

    def revoke_user(self, name: str) -> UserRevoked:
        """Revoke a user's token now, and close its MLflow account.

        Raises:
            SpecError: no such user, or the last admin.
        """
        from orchestrator.scheduling import mlflow_accounts

        with self._changing("users.revoke", name) as store:
            revoked = store.identities.revoke(name)
            _audit(store, "users.revoke", name)
            account = mlflow_accounts.close_account(name)  # the revocation stands regardless
            _audit_account(store, account)
        return UserRevoked(user=revoked, mlflow_account=account)

    def set_user_quota(self, name: str, **limits) -> Quota:
        """A user's own quotas, beside its team's (``cpus``, ``gpus``, ``memory`` GiB,
        ``running``, ``queued``, ``priority``; None lifts a limit)."""
        with self._changing("users.set", name) as store:
            quota = store.identities.set_user_quota(name, store.last_cluster(), **limits)
            _audit(store, "users.set", name, json.dumps(limits))
        return quota

    # ------------------------------------------------------------------------ teams

    def teams(self) -> list[Team]:
        """Every team, its quotas, roots and live members."""
        with self._store() as store:
            return store.identities.teams()

    def add_team(self, name: str) -> Team:
        with self._changing("teams.add", name) as store:
            team = store.identities.add_team(name)
            _audit(store, "teams.add", name)
        return team

    def set_team(self, name: str, roots: list[str] | None = None, **limits) -> Team:
        """A team's quotas (as ``set_user_quota``) and, when given, the folders its
        members' data, checkpoints and tracking store must lie in (``[]`` clears them)."""
        with self._changing("teams.set", name) as store:
            team = store.identities.set_quota(name, store.last_cluster(), **limits)
            changed = dict(limits)
            if roots is not None:
                team = store.identities.set_roots(name, roots)
                changed["roots"] = team.roots
            _audit(store, "teams.set", name, json.dumps(changed))
        return team

    # ------------------------------------------------------------------------ audit

    def audit(self, user: str | None = None, since_hours: float | None = None) -> list[AuditEntry]:
        """The audit trail, oldest first: every call, or one user's, or the last hours'."""
        since = None if since_hours is None else time.time() - since_hours * 3600
        with self._store() as store:
            return store.audit.entries(user, since)

    def verify_audit(self) -> Verification:
        """Check the trail's HMAC chain: ``ok``, or the first bad row (``problem``)."""
        with self._store() as store:
            return store.audit.verify()

    # ------------------------------------------------------------------------ the file

    @contextmanager
    def _store(self) -> Iterator:
        from orchestrator.scheduling.store import JobStore

        store = JobStore(self.path)
        try:
            yield store
        finally:
            store.close()

    @contextmanager
    def _changing(self, action: str, target: str) -> Iterator:
        """The store for a change; a refused one is audited, then raised as SpecError."""
        with self._store() as store:
            try:
                yield store
            except IdentityError as exc:
                _audit(store, action, target, f"refused: {exc}")
                raise SpecError(str(exc)) from None


def _operator() -> str:
    """The audit row's user: the OS account running the command (never $USER or $LOGNAME,
    which the caller sets at will, as ``getpass.getuser`` reads them first)."""
    from orchestrator.home import os_user

    return f"cli:{os_user()}"


def _audit(store, action: str, target: str, outcome: str = "ok") -> None:
    outcome = outcome if outcome == "ok" or outcome.startswith("refused") else f"ok: {outcome}"
    store.audit.append(user=_operator(), team="admins", action=action, target=target,
                       address="cli", outcome=outcome)  # fmt: skip


def _audit_account(store, account: AccountChange | None) -> None:
    if account is not None:
        outcome = account.detail if account.done else f"refused: {account.detail}"
        _audit(store, "users.mlflow_account", account.name, outcome)
