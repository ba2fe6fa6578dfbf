"""The queue's audit trail: who changed what, when, from where, and how it ended.

Rows live in ``queue.db`` beside the jobs (the same durable store), each chained to the one
before by an HMAC-SHA256 whose key is a file next to the database that only the server's
user can read (``audit.key``, mode 0600). The latest link is also kept outside the database
(``audit.head``), so ``verify`` detects an edited row (its MAC), a removed one (a gap in the
sequence), cut-off rows at the end (the head is ahead of the table) and a trail rewritten
from scratch (without the key no MAC matches). Appends from the server and from an admin's
CLI on the head take a file lock, so the head always names the newest row.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    user TEXT NOT NULL,
    team TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    address TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    mac TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_user ON audit(user);
"""
KEY_FILE = "audit.key"
HEAD_FILE = "audit.head"
_FIELDS = ("seq", "at", "user", "team", "action", "target", "address", "outcome", "detail")


class AuditEntry(BaseModel):
    """One state-changing call (or its refusal)."""

    seq: int
    at: float
    user: str
    team: str
    action: str  # submit, cancel, retry, users.add, users.revoke, teams.add, ...
    target: str  # the job, user or team it was about
    address: str  # the caller's address ("cli" for a command on the head)
    outcome: str  # "ok", or "refused (403): why", "failed: why"
    detail: str = ""
    mac: str = ""


class Verification(BaseModel):
    """``orch audit --verify``: whether the trail is whole, and where it is not."""

    ok: bool
    rows: int
    problem: str | None = None
    seq: int | None = None


def _private_file(path: Path, content: str) -> None:
    """Write ``content`` readable by this user only, replacing ``path`` in one rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class AuditTrail:
    """Append and read the chained rows of ``queue.db``'s audit table."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, state_dir: Path):
        self._db = db
        self._lock = lock
        self._key_path = state_dir / KEY_FILE
        self._head_path = state_dir / HEAD_FILE
        with self._lock:
            self._db.executescript(SCHEMA)
        if not self._key_path.exists():
            _private_file(self._key_path, secrets.token_hex(32))
        self._key = bytes.fromhex(self._key_path.read_text().strip())

    def _mac(self, previous: str, entry: AuditEntry) -> str:
        values = [getattr(entry, f) for f in _FIELDS]
        message = previous.encode() + b"\n" + json.dumps(values).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    @contextmanager
    def _appending(self):
        with open(self._head_path.with_suffix(".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def append(
        self,
        *,
        user: str,
        team: str,
        action: str,
        target: str,
        address: str,
        outcome: str = "ok",
        detail: str = "",
    ) -> AuditEntry:
        with self._lock, self._appending():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute(
                    "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, previous = (last[0] + 1, last[1]) if last else (1, "")
                entry = AuditEntry(
                    seq=seq, at=time.time(), user=user, team=team, action=action,
                    target=target, address=address, outcome=outcome, detail=detail,
                )  # fmt: skip
                entry.mac = self._mac(previous, entry)
                self._db.execute(
                    "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [getattr(entry, f) for f in _FIELDS] + [entry.mac],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            _private_file(self._head_path, json.dumps({"seq": entry.seq, "mac": entry.mac}))
        return entry

    def entries(self, user: str | None = None, since: float | None = None) -> list[AuditEntry]:
        query, args = "SELECT * FROM audit WHERE 1 = 1", []
        if user is not None:
            query, args = query + " AND user = ?", [*args, user]
        if since is not None:
            query, args = query + " AND at >= ?", [*args, since]
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        return [AuditEntry(**dict(zip((*_FIELDS, "mac"), row, strict=True))) for row in rows]

    def verify(self) -> Verification:
        """Walk the chain from the first row and compare its end with the head file."""
        rows = self.entries()
        previous = ""
        for expected_seq, entry in enumerate(rows, start=1):
            if entry.seq != expected_seq:
                return Verification(
                    ok=False, rows=len(rows), seq=expected_seq,
                    problem=f"row {expected_seq} is missing (the next row is {entry.seq})",
                )  # fmt: skip
            if not hmac.compare_digest(self._mac(previous, entry), entry.mac):
                return Verification(
                    ok=False, rows=len(rows), seq=entry.seq,
                    problem=f"row {entry.seq} was changed ({entry.action} {entry.target} by "
                    f"{entry.user} does not match its MAC)",
                )  # fmt: skip
            previous = entry.mac
        head = self._head()
        last = rows[-1] if rows else None
        if head is not None and (last is None or head["seq"] != last.seq):
            return Verification(
                ok=False, rows=len(rows), seq=head["seq"],
                problem=f"the trail ends at row {last.seq if last else 0} but its head "
                f"({self._head_path}) names row {head['seq']}: rows were removed from the end",
            )  # fmt: skip
        if head is not None and not hmac.compare_digest(head["mac"], last.mac):
            return Verification(
                ok=False, rows=len(rows), seq=last.seq,
                problem=f"row {last.seq} is not the row the head names: the trail was rewritten",
            )  # fmt: skip
        if head is None and rows:
            return Verification(
                ok=False, rows=len(rows), seq=None,
                problem=f"the trail has {len(rows)} rows but its head ({self._head_path}) is gone",
            )  # fmt: skip
        return Verification(ok=True, rows=len(rows))

    def _head(self) -> dict | None:
        try:
            return json.loads(self._head_path.read_text())
        except (OSError, ValueError):
            return None
