"""The queue's audit trail: who changed what, when, from where, and how it ended.

Rows live in ``queue.db`` beside the jobs (the same durable store), each chained to the one
before by an HMAC-SHA256 whose key is a file next to the database that only the server's
user can read (``audit.key``, mode 0600). The end of the chain is also kept outside the
database, in ``audit.head``: the newest row's number and MAC and the count of rows written,
sealed by an HMAC with the same key. ``verify`` then detects an edited row (its MAC), a
removed one (a gap in the sequence), rows cut off at the end (the head names a row the
table no longer has, or more rows than it holds), a head rewritten or put back by hand (its
seal), and a trail rewritten from scratch (without the key no MAC matches). Appends from
the server and from an admin's CLI on the head take a file lock (``audit.lock``), so the
head always names the newest row.

What is trusted, and the rules that follow from it. The attacker this guards against can
change ``queue.db`` and ``audit.head`` (or remove them) but cannot read ``audit.key``:

- The key and a sealed head naming row 0 are written together when the queue is first
  opened (the head first, the key last: a queue with a key always had a head). From then
  on a missing head is a failure even with no rows: removing every row and the head is
  how one would hide the whole trail.
- The key file says which head format the queue uses (``{"format": 2, "key": ...}``). The
  previous release wrote the key as bare hex and an unsealed head (``{"seq", "mac"}``);
  the first open by this release seals that head as it stands (under the lock, before
  anything else is appended), then rewrites the key file in the new format. Sealing keeps
  the old head's claim, so rows cut before the upgrade still fail. After that an unsealed
  head is never accepted: ``verify`` fails naming it (it was written by hand, or by an
  older orch after a downgrade: one cannot read the new key file, so a downgrade means
  putting the bare key back, and its first append then fails ``verify`` from that row).
  An older release's queue whose head was already gone keeps failing as it did.
- An append never launders a bad head into a good one. If the head is missing, unsealed,
  forged, or names a row the table no longer has, the row is still written (the queue
  keeps working) but the new head carries the problem (``broken``) and every head after
  it does too, so ``verify`` keeps failing and says where it was found. A head that names
  a row beyond the table's end also makes the chain continue after that row, leaving the
  cut rows as a gap.
- Rows after the one the head names, with MACs that chain, are accepted: only the key's
  holder can make them (a crash between a row's commit and its head's write leaves one).

Not detected: a sealed head copied earlier and put back after the rows since were removed
(only a copy of the head kept off this machine catches that), and the key, the head and
every row removed together (the queue then looks new; removing the key alone makes every
row fail its MAC).
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

from pydantic import BaseModel, ValidationError

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
LOCK_FILE = "audit.lock"
KEY_FORMAT = 2
"""``format`` of the key file this release writes: its head is sealed. A key file of bare
hex is the previous release's (unsealed head)."""
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


class AuditHead(BaseModel):
    """``audit.head``: where the trail ends, sealed with the audit key."""

    seq: int
    """The newest row's number (0: none written yet)."""
    rows: int
    """Rows written to the trail since it began."""
    row_mac: str
    """The newest row's MAC ("" before the first row)."""
    broken: str | None = None
    """What an append found wrong with the head before it (kept by every later head)."""
    broken_at: int | None = None
    """The row whose append found it."""
    head_mac: str = ""
    """HMAC of the fields above with the audit key."""


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
    """Append, read and verify the chained rows of ``queue.db``'s audit table."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, state_dir: Path):
        self._db = db
        self._lock = lock
        self._key_path = state_dir / KEY_FILE
        self._head_path = state_dir / HEAD_FILE
        self._lock_path = state_dir / LOCK_FILE
        with self._lock:
            self._db.executescript(SCHEMA)
        self._key = b""
        with self._lock, self._appending():
            self._open_key()

    def _open_key(self) -> None:
        """Read the audit key, or create it with the first head on a new queue; a previous
        release's key file is upgraded once, after its head is sealed (the module's rules)."""
        try:
            text = self._key_path.read_text().strip()
        except FileNotFoundError:
            self._key = secrets.token_bytes(32)
            self._write_head(AuditHead(seq=0, rows=0, row_mac=""))
            self._write_key()  # last: a queue with a key always had a head
            return
        if text.startswith("{"):
            self._key = bytes.fromhex(json.loads(text)["key"])
            return
        self._key = bytes.fromhex(text)
        self._seal_older_head()
        self._write_key()

    def _write_key(self) -> None:
        _private_file(self._key_path, json.dumps({"format": KEY_FORMAT, "key": self._key.hex()}))

    def _seal_older_head(self) -> None:
        """Seal the previous release's head as it stands: its claim (the newest row's
        number and MAC) is kept, so rows cut before the upgrade still fail ``verify``."""
        try:
            document = json.loads(self._head_path.read_text())
        except FileNotFoundError:
            if self._last_link() is None:  # never appended to: a new trail
                self._write_head(AuditHead(seq=0, rows=0, row_mac=""))
            return  # rows without a head: verify keeps saying it is gone
        except (OSError, ValueError):
            return  # unreadable: verify says so
        if not isinstance(document, dict) or "head_mac" in document:
            return
        seq, mac = document.get("seq"), document.get("mac")
        if isinstance(seq, int) and isinstance(mac, str):
            self._write_head(AuditHead(seq=seq, rows=seq, row_mac=mac))

    def _mac(self, previous: str, entry: AuditEntry) -> str:
        values = [getattr(entry, f) for f in _FIELDS]
        message = previous.encode() + b"\n" + json.dumps(values).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _seal(self, head: AuditHead) -> str:
        values = [head.seq, head.rows, head.row_mac, head.broken, head.broken_at]
        message = HEAD_FILE.encode() + b"\n" + json.dumps(values).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _write_head(self, head: AuditHead) -> None:
        head.head_mac = self._seal(head)
        _private_file(self._head_path, head.model_dump_json())

    @contextmanager
    def _appending(self):
        """The lock every process that writes the trail or reads it whole takes."""
        fd = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _last_link(self) -> tuple[int, str] | None:
        """The newest row's (seq, mac), or None for an empty table."""
        return self._db.execute("SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1").fetchone()

    def _mac_of(self, seq: int) -> str | None:
        row = self._db.execute("SELECT mac FROM audit WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None

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
                seq, previous, head = self._next_link()
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
            newest = {"seq": seq, "rows": seq, "row_mac": entry.mac}
            self._write_head(head.model_copy(update=newest))
        return entry

    def _next_link(self) -> tuple[int, str, AuditHead]:
        """The next row's number, the MAC it chains to, and the head it is written under
        (carrying what was found wrong with the one before, if anything was)."""
        last = self._last_link()
        end, last_mac = last if last else (0, "")
        head, problem = self._read_head()
        if head is None:
            head = AuditHead(seq=0, rows=0, row_mac="")
        else:
            tail = self._tail_problem(head, last, self._mac_of(head.seq))
            problem = tail[1] if tail else None
        if head.seq > end:
            seq, previous = head.seq + 1, head.row_mac  # the cut rows stay a gap
        else:
            seq, previous = end + 1, last_mac
        if problem is not None and head.broken is None:
            head = head.model_copy(update={"broken": problem, "broken_at": seq})
        return seq, previous, head

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
        """Walk the chain from the first row, then check its end against the sealed head."""
        with self._lock, self._appending():  # no append lands between the rows and the head
            rows = self.entries()
            head, problem = self._read_head()
        failed = self._chain_problem(rows)
        if failed is not None:
            return failed
        if problem is not None:
            return Verification(
                ok=False, rows=len(rows), problem=f"the trail has {len(rows)} rows but {problem}"
            )
        last = (rows[-1].seq, rows[-1].mac) if rows else None
        named = rows[head.seq - 1].mac if 0 < head.seq <= len(rows) else None
        tail = self._tail_problem(head, last, named)
        if tail is None and len(rows) < head.rows:
            tail = (head.seq, f"the trail has {len(rows)} rows but its head ({self._head_path}) "
                    f"says {head.rows} were written: rows were removed")  # fmt: skip
        if tail is None and head.broken is not None:
            tail = (head.broken_at, f"the trail was found broken when row {head.broken_at} was "
                    f"appended: {head.broken}")  # fmt: skip
        if tail is not None:
            return Verification(ok=False, rows=len(rows), seq=tail[0], problem=tail[1])
        return Verification(ok=True, rows=len(rows))

    def _chain_problem(self, rows: list[AuditEntry]) -> Verification | None:
        """The first row missing from the sequence or not matching its MAC, if any."""
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
        return None

    def _tail_problem(
        self, head: AuditHead, last: tuple[int, str] | None, named_mac: str | None
    ) -> tuple[int, str] | None:
        """Whether the table still ends where a sealed head says: ``last`` is its newest
        row's (seq, mac), ``named_mac`` the MAC of the row the head names."""
        end = last[0] if last else 0
        if head.seq > end:
            return head.seq, (
                f"the trail ends at row {end} but its head ({self._head_path}) names row "
                f"{head.seq}: rows were removed from the end"
            )
        if head.seq and not (named_mac and hmac.compare_digest(named_mac, head.row_mac)):
            return (
                head.seq,
                f"row {head.seq} is not the row the head names: the trail was rewritten",
            )
        return None

    def _read_head(self) -> tuple[AuditHead | None, str | None]:
        """The head, and what is wrong with it (None: sealed with our key)."""
        where = f"its head ({self._head_path})"
        try:
            document = json.loads(self._head_path.read_text())
        except FileNotFoundError:
            return None, (
                f"{where} is gone (it is written with the key when the queue is first "
                "opened): rows, or the whole trail, were removed"
            )
        except (OSError, ValueError) as exc:
            return None, f"{where} cannot be read ({exc})"
        if not isinstance(document, dict) or "head_mac" not in document:
            return None, (
                f"{where} has no MAC: it is in the unsealed format of an older orch, which "
                "this queue left when it was upgraded, so it was written since by hand (or "
                "by an older orch)"
            )
        try:
            head = AuditHead.model_validate(document)
        except ValidationError:
            return None, f"{where} is not a head orch writes"
        if not hmac.compare_digest(self._seal(head), head.head_mac):
            return None, f"{where} does not match its MAC: it was forged or edited"
        return head, None
