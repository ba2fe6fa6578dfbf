"""Durable job records in SQLite: the queue survives the orchestrator's restarts.

One row per job: the indexed columns the scheduler filters on, and the whole ``JobInfo`` as
JSON. WAL journaling with ``synchronous=FULL``: a write the API has acknowledged survives a
kill of the process. Ids come from an AUTOINCREMENT sequence, so they are never reused.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.home import private_sqlite
from orchestrator.scheduling.audit import AuditTrail
from orchestrator.scheduling.identity import Identities
from orchestrator.scheduling.record import ACTIVE, JobInfo

if TYPE_CHECKING:
    from orchestrator.scheduling.demand import Deployment

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (
    app TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    record TEXT NOT NULL
);
"""


SCHEMA_VERSION = 5
"""``PRAGMA user_version`` of a queue.db this release writes. 0 is a file from before the
version existed (same tables), adopted as version 1; 2 adds users, teams and the audit
trail (new tables only: a version-1 file is adopted as is, its jobs owned by the admin); 3
adds per-user quotas (a new table); 4 scopes idempotency keys to their owner (the column
holds ``owner<US>key``; older rows are rewritten so); 5 keeps the Serve applications
finished jobs left running, charged to their teams (a new table). A higher one is a newer release's:
an older orch refuses it rather than ignore its users or their limits."""

KEY_SEPARATOR = "\x1f"
"""Between the owner and the key in the ``idempotency_key`` column (user names cannot hold
it): the same key from two users is two keys, and nobody reaches another's job by its key."""


def scoped_key(owner: str, key: str | None) -> str | None:
    """The stored form of ``owner``'s idempotency ``key``."""
    return None if key is None else f"{owner}{KEY_SEPARATOR}{key}"


class StoreVersionError(RuntimeError):
    """queue.db was written by a newer orch than this one."""


class DuplicateKey(Exception):
    """The idempotency key is taken; ``job`` is the job that holds it."""

    def __init__(self, job: JobInfo):
        super().__init__(job.id)
        self.job = job


class JobStore:
    """Thread-safe access to ``queue.db`` (one connection, one lock: SQLite serialises anyway)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_sqlite(self.path)  # folder 0700, queue.db and its -wal/-shm 0600
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._adopt_schema()
        self.identities = Identities(self._db, self._lock)
        self.audit = AuditTrail(self._db, self._lock, self.path.parent)
        # This queue's id, fixed at creation: it keeps the Ray submission ids of two queues
        # on one cluster apart (each ORCH_HOME numbers its jobs from job-000001).
        new_id = uuid.uuid4().hex[:8]
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('queue_id', ?)", (new_id,))
        row = self._db.execute("SELECT value FROM meta WHERE key = 'queue_id'").fetchone()
        self.queue_id: str = row[0]

    def _adopt_schema(self) -> None:
        """Create the tables, or check an existing file's version and bring it to ours.

        Raises:
            StoreVersionError: the file's schema is newer than this release's.
        """
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.path} holds queue schema {version}, newer than this orch's "
                f"{SCHEMA_VERSION}: upgrade orch, or use another ORCH_HOME"
            )
        self._db.executescript(_SCHEMA)  # version 0 had the same tables: nothing to move
        if version < 4:  # keys were global: each becomes its owner's
            self._db.execute(
                "UPDATE jobs SET idempotency_key = coalesce(json_extract(record, '$.owner'), "
                "'admin') || char(31) || idempotency_key WHERE idempotency_key IS NOT NULL"
            )
        if version < SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def record_cluster(self, total: dict[str, float]) -> None:
        """Keep the cluster's resources as the scheduler last saw them (quotas are checked
        against it when no server is asked)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO meta VALUES ('cluster_total', ?) ON CONFLICT(key) DO UPDATE SET "
                "value = excluded.value",
                (json.dumps(total),),
            )

    def last_cluster(self) -> dict[str, float] | None:
        """The cluster's resources at the scheduler's last pass; None if none ran yet."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'cluster_total'").fetchone()
        return json.loads(row[0]) if row else None

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _insert(self, job: JobInfo) -> None:
        """Insert inside the caller's transaction; the id comes from the row's sequence."""
        cursor = self._db.execute(
            "INSERT INTO jobs (id, state, idempotency_key, record) VALUES (?, ?, ?, '')",
            (f"pending-{uuid.uuid4().hex}", job.state, scoped_key(job.owner, job.idempotency_key)),
        )
        job.seq = cursor.lastrowid
        job.id = f"job-{job.seq:06d}"
        self._db.execute(
            "UPDATE jobs SET id = ?, record = ? WHERE seq = ?",
            (job.id, job.model_dump_json(), job.seq),
        )

    def add(self, job: JobInfo) -> JobInfo:
        """Insert a new job; its id and seq come from the sequence.

        Raises:
            DuplicateKey: a job with the same idempotency key exists.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._insert(job)
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                existing = self.by_key(job.owner, job.idempotency_key)
                if existing is None:
                    raise
                raise DuplicateKey(existing) from None
            return job

    def add_if(self, job: JobInfo, admit: Callable[[list[JobInfo]], None]) -> JobInfo:
        """Insert ``job`` as ``add`` does, if ``admit`` lets it in, in one transaction: the
        check and the insert see the same queue, so two submits can never both pass a
        queued-jobs cap (``BEGIN IMMEDIATE``: one writer at a time, other processes too).

        Args:
            job: the new job.
            admit: called with the queued jobs of ``job``'s team and owner (all that a
                team's or a user's cap counts); raises to refuse.

        Raises:
            DuplicateKey: a job with the same idempotency key exists.
            Whatever ``admit`` raises: nothing is inserted.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT record FROM jobs WHERE state = 'queued' AND (json_extract(record, "
                    "'$.team') = ? OR json_extract(record, '$.owner') = ?) ORDER BY seq",
                    (job.team, job.owner),
                ).fetchall()
                admit([JobInfo.model_validate_json(r[0]) for r in rows])
                self._insert(job)
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                existing = self.by_key(job.owner, job.idempotency_key)
                if existing is None:
                    raise
                raise DuplicateKey(existing) from None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return job

    def record_deployment(self, deployment: Deployment) -> None:
        """Keep ``deployment`` (a finished job's Serve application) charged to its team and
        owner; it replaces an earlier record of the same application (a redeploy)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO deployments VALUES (?, ?, ?) ON CONFLICT(app) DO UPDATE SET "
                "team = excluded.team, record = excluded.record",
                (deployment.app, deployment.team, deployment.model_dump_json()),
            )

    def end_deployment(self, app: str) -> Deployment | None:
        """Stop charging application ``app`` (it was taken down); its record, None if none."""
        from orchestrator.scheduling.demand import Deployment

        with self._lock:
            # fetchall: the DELETE ends (and commits) only once its rows are read
            rows = self._db.execute(
                "DELETE FROM deployments WHERE app = ? RETURNING record", (app,)
            ).fetchall()
        return Deployment.model_validate_json(rows[0][0]) if rows else None

    def deployments(self) -> list[Deployment]:
        """The applications finished jobs left deployed, each charged to its team."""
        from orchestrator.scheduling.demand import Deployment

        with self._lock:
            rows = self._db.execute("SELECT record FROM deployments ORDER BY app").fetchall()
        return [Deployment.model_validate_json(r[0]) for r in rows]

    def add_many(self, jobs: Iterable[JobInfo]) -> int:
        """Insert many jobs in one transaction (benchmarks, imports)."""
        count = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for job in jobs:
                self._insert(job)
                count += 1
            self._db.execute("COMMIT")
        return count

    def save(self, job: JobInfo) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, record = ? WHERE id = ?",
                (job.state, job.model_dump_json(), job.id),
            )

    def get(self, job_id: str) -> JobInfo | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobInfo.model_validate_json(row[0]) if row else None

    def by_key(self, owner: str, key: str | None) -> JobInfo | None:
        """``owner``'s job submitted with idempotency ``key`` (never another user's)."""
        if key is None:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM jobs WHERE idempotency_key = ?", (scoped_key(owner, key),)
            ).fetchone()
        return JobInfo.model_validate_json(row[0]) if row else None

    def in_states(self, states: Iterable[str]) -> list[JobInfo]:
        states = list(states)
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(
                # bandit B608 accepted: the query holds only "?" placeholders; states are bound
                f"SELECT record FROM jobs WHERE state IN ({marks}) ORDER BY seq",  # nosec B608
                states,
            ).fetchall()
        return [JobInfo.model_validate_json(r[0]) for r in rows]

    def queued(self) -> list[JobInfo]:
        return self.in_states(["queued"])

    def active(self) -> list[JobInfo]:
        return self.in_states(ACTIVE)

    def all(self, limit: int | None = None) -> list[JobInfo]:
        query = "SELECT record FROM jobs ORDER BY seq DESC"
        if limit:
            query += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(query).fetchall()
        return [JobInfo.model_validate_json(r[0]) for r in reversed(rows)]
