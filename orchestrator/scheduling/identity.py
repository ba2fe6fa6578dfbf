"""Who calls the queue: users with a role and a team, and their bearer tokens.

Kept in the queue's own SQLite file (``queue.db``), so users survive a server restart and
travel with the queue. A token is ``orch_<id>_<secret>``: the id (8 hex) finds the row, the
secret is 256 random bits; only the SHA-256 of the whole token is stored and it is compared
in constant time. A revoked token stops working on the next call.

With no user at all the queue runs as before (the local user is the admin, the Ray token
guards the server when the cluster uses token auth). The first user must be an admin, so
nobody locks themselves out; from then on every call names its user.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

Role = Literal["admin", "member", "viewer"]
ROLES: tuple[str, ...] = ("admin", "member", "viewer")
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
TOKEN = re.compile(r"^orch_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS teams (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    quota TEXT NOT NULL DEFAULT '{}',
    roots TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    team TEXT NOT NULL REFERENCES teams(name),
    role TEXT NOT NULL,
    token_id TEXT UNIQUE NOT NULL,
    token_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""
ADMIN_TEAM = "admins"


class IdentityError(ValueError):
    """A user mistake in a users/teams call; the message names the value and the fix."""


class User(BaseModel):
    """A caller of the queue (never with the token: only its id is kept in the clear)."""

    name: str
    team: str
    role: Role
    token_id: str
    created_at: float
    revoked_at: float | None = None

    @property
    def admin(self) -> bool:
        return self.role == "admin"


LOCAL_ADMIN = User(name="admin", team=ADMIN_TEAM, role="admin", token_id="-", created_at=0.0)
"""The caller when no user exists (a laptop), or who holds the cluster's Ray token."""


class Quota(BaseModel):
    """A team's limits; None = no limit. Held resources and running jobs make a job wait
    (with the reason); queued jobs and priority refuse a submit."""

    model_config = {"extra": "forbid"}

    cpus: float | None = Field(None, ge=0, description="CPUs its running jobs hold at once.")
    gpus: float | None = Field(None, ge=0, description="GPUs its running jobs hold at once.")
    running: int | None = Field(None, ge=0, description="Jobs running at once.")
    queued: int | None = Field(None, ge=0, description="Jobs waiting in the queue at once.")
    priority: int | None = Field(None, ge=0, description="Highest priority it may submit at.")

    def held_limits(self) -> dict[str, float]:
        """Ray resource name -> limit, for the held-resource quotas that are set."""
        named = {"CPU": self.cpus, "GPU": self.gpus}
        return {key: limit for key, limit in named.items() if limit is not None}


class Team(BaseModel):
    name: str
    created_at: float
    members: int = 0
    quota: Quota = Field(default_factory=Quota)
    roots: list[str] = Field(
        default_factory=list,
        description="Folders a member's data, checkpoints and tracking store must lie in; the "
        "first is where the team's jobs run.",
    )


class NewUser(BaseModel):
    """``orch users add``'s answer: the token is shown this once and stored only hashed."""

    user: User
    token: str


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(kind: str, name: str) -> str:
    if not NAME.match(name):
        raise IdentityError(
            f"{kind} name {name!r}: use 1-32 of a-z, 0-9, '_' or '-', starting with a letter"
        )
    return name


class Identities:
    """Users and teams in ``queue.db`` (its own connection; SQLite serialises writers)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
        self._db = db
        self._lock = lock
        with self._lock:
            self._db.executescript(SCHEMA)

    # ------------------------------------------------------------------ reading

    def enforced(self) -> bool:
        """True once any user exists: every call must then carry a user's token."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    def users(self, name: str | None = None) -> list[User]:
        """Every user by name, or only ``name`` (one indexed row: each API call asks)."""
        query = "SELECT name, team, role, token_id, created_at, revoked_at FROM users"
        where, args = (" WHERE name = ?", (name,)) if name is not None else ("", ())
        with self._lock:
            rows = self._db.execute(query + where + " ORDER BY name", args).fetchall()
        return [User(**dict(zip(User.model_fields, row, strict=True))) for row in rows]

    def user(self, name: str) -> User | None:
        found = self.users(name)
        return found[0] if found else None

    def teams(self) -> list[Team]:
        with self._lock:
            rows = self._db.execute(
                "SELECT t.name, t.created_at, t.quota, t.roots, COUNT(u.name) FROM teams t "
                "LEFT JOIN users u ON u.team = t.name AND u.revoked_at IS NULL "
                "GROUP BY t.name ORDER BY t.name"
            ).fetchall()
        return [
            Team(
                name=n,
                created_at=c,
                members=m,
                quota=Quota.model_validate_json(q),
                roots=json.loads(r),
            )
            for n, c, q, r, m in rows
        ]

    def team(self, name: str) -> Team | None:
        return next((t for t in self.teams() if t.name == name), None)

    def set_roots(self, name: str, roots: list[str]) -> Team:
        """Replace team ``name``'s allowed roots (absolute folders that exist).

        Raises:
            IdentityError: unknown team, or a root that is relative or missing.
        """
        if self.team(name) is None:
            raise IdentityError(f"unknown team {name!r} (orch teams list)")
        for root in roots:
            if not Path(root).is_absolute() or not Path(root).is_dir():
                raise IdentityError(f"--roots: {root!r} is not an absolute path to a folder")
        with self._lock:
            self._db.execute(
                "UPDATE teams SET roots = ? WHERE name = ?",
                (json.dumps([str(Path(r).resolve()) for r in roots]), name),
            )
        return self.team(name)

    def quotas(self) -> dict[str, Quota]:
        """Team name -> its quota, for the teams that have any limit."""
        return {t.name: t.quota for t in self.teams() if t.quota != Quota()}

    def authenticate(self, token: str) -> User | None:
        """The live user whose token this is; None for anything else (malformed, unknown,
        revoked), with the same constant-time comparison whatever the case."""
        match = TOKEN.match(token.strip())
        token_id = match.group(1) if match else "-"
        with self._lock:
            row = self._db.execute(
                "SELECT name, token_sha256, revoked_at FROM users WHERE token_id = ?",
                (token_id,),
            ).fetchone()
        expected = row[1] if row else _sha256("no user")
        same = hmac.compare_digest(_sha256(token.strip()), expected)
        if not (match and row and same and row[2] is None):
            return None
        return self.user(row[0])

    # ------------------------------------------------------------------ changing

    def set_quota(self, name: str, **limits) -> Team:
        """Set (or with None lift) some of team ``name``'s limits; the others stay.

        Raises:
            IdentityError: unknown team, or a negative limit.
        """
        team = next((t for t in self.teams() if t.name == name), None)
        if team is None:
            raise IdentityError(f"unknown team {name!r} (orch teams list)")
        try:
            quota = Quota.model_validate(team.quota.model_dump() | limits)
        except ValidationError as exc:
            problem = exc.errors()[0]
            field = problem["loc"][0] if problem["loc"] else "quota"
            raise IdentityError(f"--{field}: {problem['msg'].lower()}") from None
        with self._lock:
            self._db.execute(
                "UPDATE teams SET quota = ? WHERE name = ?", (quota.model_dump_json(), name)
            )
        return next(t for t in self.teams() if t.name == name)

    def add_team(self, name: str) -> Team:
        check_name("team", name)
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO teams (name, created_at) VALUES (?, ?)", (name, time.time())
                )
            except sqlite3.IntegrityError:
                raise IdentityError(f"team {name!r} exists already") from None
        return next(t for t in self.teams() if t.name == name)

    def add_user(self, name: str, team: str, role: str) -> NewUser:
        """Create a user and its token (printed once).

        Raises:
            IdentityError: bad name or role, unknown team, a name taken, or a first user
                who is not an admin.
        """
        check_name("user", name)
        if role not in ROLES:
            raise IdentityError(f"role {role!r}: use one of {', '.join(ROLES)}")
        if not self.enforced() and role != "admin":
            raise IdentityError(
                "the first user must be an admin (--role admin): once a user exists every "
                "call needs a token, and only an admin can add the others"
            )
        token_id = secrets.token_hex(4)
        token = f"orch_{token_id}_{secrets.token_urlsafe(32)}"
        with self._lock:
            if team == ADMIN_TEAM or role == "admin":
                self._db.execute(
                    "INSERT OR IGNORE INTO teams (name, created_at) VALUES (?, ?)",
                    (team, time.time()),
                )
            if not self._db.execute("SELECT 1 FROM teams WHERE name = ?", (team,)).fetchone():
                known = ", ".join(t.name for t in self.teams()) or "none yet"
                raise IdentityError(
                    f"unknown team {team!r} (teams: {known}); add it with: orch teams add {team}"
                )
            try:
                self._db.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, NULL)",
                    (name, team, role, token_id, _sha256(token), time.time()),
                )
            except sqlite3.IntegrityError:
                raise IdentityError(
                    f"user {name!r} exists already (orch users revoke {name} first to replace)"
                ) from None
        return NewUser(user=self.user(name), token=token)

    def revoke(self, name: str) -> User:
        """Revoke ``name``'s token now; the user's jobs stay.

        Raises:
            IdentityError: no such live user, or the last live admin.
        """
        user = self.user(name)
        if user is None or user.revoked_at is not None:
            raise IdentityError(f"no live user {name!r} (orch users list)")
        admins = [u for u in self.users() if u.admin and u.revoked_at is None]
        if user.admin and len(admins) == 1:
            raise IdentityError(f"{name!r} is the last admin; add another admin first")
        with self._lock:
            self._db.execute("UPDATE users SET revoked_at = ? WHERE name = ?", (time.time(), name))
        return self.user(name)
