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
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from orchestrator.scheduling.locations import LocationRefused, parse_root

Role = Literal["admin", "member", "viewer"]
ROLES: tuple[str, ...] = ("admin", "member", "viewer")
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
TEAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
"""A team's name has no ``-``: it separates the team from the rest of a name it owns
(``vision-resnet``), so no team's names can begin with another team's."""
RESERVED_USERS = frozenset({"admin", "orch", "scheduler", "-"})
"""Names the queue itself signs with: ``admin`` (who holds the Ray token, LOCAL_ADMIN),
``orch``, ``scheduler``, and ``-`` (an unauthenticated caller in the audit trail)."""
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
CREATE TABLE IF NOT EXISTS user_quotas (
    name TEXT PRIMARY KEY REFERENCES users(name),
    quota TEXT NOT NULL
);
"""
GIB = 2**30
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
    """A team's or a user's limits; None = no limit. Held resources and running jobs make a
    job wait (with the reason); queued jobs and priority refuse a submit."""

    model_config = {"extra": "forbid"}

    cpus: float | None = Field(None, ge=0, description="CPUs its running jobs hold at once.")
    gpus: float | None = Field(None, ge=0, description="GPUs its running jobs hold at once.")
    memory: float | None = Field(
        None, ge=0, description="GiB of Ray's memory resource its running jobs hold at once."
    )
    running: int | None = Field(None, ge=0, description="Jobs running at once.")
    queued: int | None = Field(None, ge=0, description="Jobs waiting in the queue at once.")
    priority: int | None = Field(None, ge=0, description="Highest priority it may submit at.")

    def held_limits(self) -> dict[str, float]:
        """Ray resource name -> limit (memory in bytes, as Ray counts it), for the
        held-resource quotas that are set."""
        memory = None if self.memory is None else self.memory * GIB
        named = {"CPU": self.cpus, "GPU": self.gpus, "memory": memory}
        return {key: limit for key, limit in named.items() if limit is not None}

    def beyond(self, cluster: dict[str, float]) -> str | None:
        """The first held-resource limit above what the whole ``cluster`` has, as a line
        naming the flag and the most it can be; None when all fit."""
        flags = {"CPU": "--cpus", "GPU": "--gpus", "memory": "--memory"}
        for key, limit in self.held_limits().items():
            has = cluster.get(key, 0.0)
            if limit > has + 1e-9:
                shown = (lambda v: f"{v / GIB:g} GiB") if key == "memory" else (lambda v: f"{v:g}")
                return (
                    f"{flags[key]} {shown(limit)} is more than the whole cluster has ({key} "
                    f"{shown(has)}, as the queue server last saw it); set at most {shown(has)}"
                )
        return None


@dataclass(frozen=True, slots=True)
class QuotaScope:
    """One quota that bounds a job: its team's or its owner's (a plain dataclass: the
    scheduler makes two per queued job on every pass)."""

    kind: Literal["team", "user"]
    name: str
    quota: Quota

    @property
    def label(self) -> str:
        """How reasons name it: ``team vision``, ``user alice``."""
        return f"{self.kind} {self.name}"

    def covers(self, job) -> bool:
        """True when ``job`` (a ``JobInfo``) counts against this quota."""
        return (job.team if self.kind == "team" else job.owner) == self.name


class Quotas(BaseModel):
    """Every limit the scheduler applies: per team and per user (a job meets both)."""

    teams: dict[str, Quota] = Field(default_factory=dict)
    users: dict[str, Quota] = Field(default_factory=dict)

    def of(self, team: str, user: str) -> list[QuotaScope]:
        """The quotas that bound a job of ``user`` in ``team``, the team's first."""
        scoped = [("team", team, self.teams.get(team)), ("user", user, self.users.get(user))]
        return [QuotaScope(kind=k, name=n, quota=q) for k, n, q in scoped if q is not None]


class Team(BaseModel):
    name: str
    created_at: float
    members: int = 0
    quota: Quota = Field(default_factory=Quota)
    roots: list[str] = Field(
        default_factory=list,
        description="Folders (absolute paths) and object-store prefixes (s3://bucket/prefix) a "
        "member's data, checkpoints and tracking store must lie in; the first folder is where "
        "the team's jobs run.",
    )


class NewUser(BaseModel):
    """``orch users add``'s answer: the token is shown this once and stored only hashed."""

    user: User
    token: str


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _merged(current: Quota, limits: dict, cluster: dict[str, float] | None) -> Quota:
    """``current`` with ``limits`` set, checked (one line naming the flag when wrong)."""
    try:
        quota = Quota.model_validate(current.model_dump() | limits)
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = problem["loc"][0] if problem["loc"] else "quota"
        flag = "max-priority" if field == "priority" else field
        raise IdentityError(f"--{flag}: {problem['msg'].lower()}") from None
    changed = Quota.model_validate({k: v for k, v in limits.items() if k in Quota.model_fields})
    problem = changed.beyond(cluster) if cluster else None
    if problem:
        raise IdentityError(problem)
    return quota


def check_name(kind: str, name: str) -> str:
    if not NAME.match(name):
        raise IdentityError(
            f"{kind} name {name!r}: use 1-32 of a-z, 0-9, '_' or '-', starting with a letter"
        )
    return name


def check_team_name(name: str) -> str:
    """A new team's name: like a user's, but without ``-``.

    Raises:
        IdentityError: the name does not match ``TEAM_NAME``.
    """
    if "-" in name and NAME.match(name):
        raise IdentityError(
            f"team name {name!r}: a team name has no '-' (it separates the team from the rest "
            f"of the names the team owns, as in {name.split('-')[0]}-model); try "
            f"{name.replace('-', '_')!r}"
        )
    if not TEAM_NAME.match(name):
        raise IdentityError(
            f"team name {name!r}: use 1-32 of a-z, 0-9 or '_', starting with a letter"
        )
    return name


def _canonical_roots(roots: list[str]) -> list[str]:
    """Team roots as stored: local folders resolved, object-store prefixes canonical.

    Raises:
        IdentityError: a root that is relative, missing, not a folder, holds a control
            character, or has a scheme other than file, s3, gs or abfs.
    """
    canonical = []
    for root in roots:
        try:
            location = parse_root(root)
        except LocationRefused as exc:
            raise IdentityError(str(exc)) from None
        if location.scheme == "file" and not location.path.is_dir():
            raise IdentityError(f"--roots: {root!r} is not an absolute path to a folder")
        canonical.append(location.uri)
    return canonical


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
        """Replace team ``name``'s allowed roots: absolute folders that exist (or
        ``file:`` URIs of them), and object-store prefixes (``s3://bucket/prefix``,
        ``gs://``, ``abfs://``), stored canonical (``locations.parse_root``).

        Raises:
            IdentityError: unknown team, or a root that is relative, missing, holds a
                control character or has another scheme.
        """
        if self.team(name) is None:
            raise IdentityError(f"unknown team {name!r} (orch teams list)")
        canonical = _canonical_roots(roots)
        with self._lock:
            self._db.execute(
                "UPDATE teams SET roots = ? WHERE name = ?", (json.dumps(canonical), name)
            )
        return self.team(name)

    def quotas(self) -> Quotas:
        """The teams' and users' quotas that set any limit (read on every scheduling pass)."""
        with self._lock:
            teams = self._db.execute("SELECT name, quota FROM teams").fetchall()
            users = self._db.execute("SELECT name, quota FROM user_quotas").fetchall()
        parse = Quota.model_validate_json
        return Quotas(
            teams={n: q for n, text in teams if (q := parse(text)) != Quota()},
            users={n: q for n, text in users if (q := parse(text)) != Quota()},
        )

    def user_quota(self, name: str) -> Quota:
        with self._lock:
            row = self._db.execute(
                "SELECT quota FROM user_quotas WHERE name = ?", (name,)
            ).fetchone()
        return Quota.model_validate_json(row[0]) if row else Quota()

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

    def set_quota(self, name: str, cluster: dict[str, float] | None = None, **limits) -> Team:
        """Set (or with None lift) some of team ``name``'s limits; the others stay.

        Raises:
            IdentityError: unknown team, a negative limit, or one above the whole
                ``cluster`` (the resources the queue server last saw; None = not known).
        """
        team = self.team(name)
        if team is None:
            raise IdentityError(f"unknown team {name!r} (orch teams list)")
        quota = _merged(team.quota, limits, cluster)
        with self._lock:
            self._db.execute(
                "UPDATE teams SET quota = ? WHERE name = ?", (quota.model_dump_json(), name)
            )
        return self.team(name)

    def set_user_quota(self, name: str, cluster: dict[str, float] | None = None, **limits) -> Quota:
        """Set (or with None lift) some of user ``name``'s own limits, which hold beside
        the team's (a job must meet both).

        Raises:
            IdentityError: unknown user, a negative limit, or one above the whole cluster.
        """
        if self.user(name) is None:
            raise IdentityError(f"unknown user {name!r} (orch users list)")
        quota = _merged(self.user_quota(name), limits, cluster)
        with self._lock:
            self._db.execute(
                "INSERT INTO user_quotas VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                "quota = excluded.quota",
                (name, quota.model_dump_json()),
            )
        return quota

    def add_team(self, name: str) -> Team:
        """Create team ``name`` (no ``-`` in it: ``check_team_name``).

        Raises:
            IdentityError: a bad name, or one taken.
        """
        check_team_name(name)
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
        if name in RESERVED_USERS:
            raise IdentityError(
                f"user name {name!r} is reserved: the queue signs its own actions with it "
                f"({', '.join(sorted(RESERVED_USERS))}); pick another"
            )
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
                if not self._db.execute("SELECT 1 FROM teams WHERE name = ?", (team,)).fetchone():
                    check_team_name(team)
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
