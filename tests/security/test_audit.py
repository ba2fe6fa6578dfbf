"""Attacks on the queue's audit trail and on the state beside it.

The attacker can change ``queue.db`` and ``audit.head`` but cannot read ``audit.key``:
cutting rows and rewriting the head, removing the whole trail, forging a head, flooding the
API with calls that carry no token, forging the admin's name through the environment, and
reading the state other users' processes left world-readable. Each attack must show in
``orch audit --verify`` (or leave nothing behind)."""

from __future__ import annotations

import json
import logging
import os
import pwd
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from orchestrator.scheduling.audit import HEAD_FILE, KEY_FILE
from orchestrator.scheduling.refusals import RefusalLog
from orchestrator.scheduling.store import JobStore
from tests.helpers import spec_text, wait_for
from tests.security.conftest import submit_body

REPO = Path(__file__).resolve().parents[2]
OS_USER = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture
def umask_kept():
    """The CLI's ``main`` makes this process's umask private; put the test runner's back."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


@pytest.fixture
def queue(tmp_path):
    """A queue's store on disk, and a way to open it again (a restart of the server)."""
    path = tmp_path / "queue" / "queue.db"
    opened = [JobStore(path)]

    def reopen() -> JobStore:
        opened.append(JobStore(path))
        return opened[-1]

    yield opened[0], reopen
    for store in opened:
        store.close()


def _write_rows(store: JobStore, n: int) -> None:
    for i in range(1, n + 1):
        store.audit.append(user="alice", team="vision", action="cancel",
                           target=f"job-{i:06d}", address="127.0.0.1")  # fmt: skip


def _tamper(store: JobStore, *statements: str) -> None:
    """Change queue.db behind the server's back, as an attacker with the file would."""
    db = sqlite3.connect(store.path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def _head(store: JobStore) -> Path:
    return store.path.parent / HEAD_FILE


def test_a_new_queue_has_a_sealed_head_from_its_first_open(queue):
    store, _ = queue
    assert store.audit.verify().model_dump() == {"ok": True, "rows": 0, "problem": None,
                                                 "seq": None}  # fmt: skip
    head = json.loads(_head(store).read_text())
    assert (head["seq"], head["rows"]) == (0, 0) and len(head["head_mac"]) == 64
    assert json.loads((store.path.parent / KEY_FILE).read_text())["format"] == 2


def test_cutting_the_tail_and_writing_an_unsealed_head_is_caught(queue):
    """(a) Remove rows 5 and 6, then write the head as the previous release did, naming
    the new last row with its true MAC. verify fails naming the head; neither a restart nor
    the next append launders it."""
    store, reopen = queue
    _write_rows(store, 6)
    row_4 = store.audit.entries()[3]
    _tamper(store, "DELETE FROM audit WHERE seq > 4")
    _head(store).write_text(json.dumps({"seq": 4, "mac": row_4.mac}))

    verdict = store.audit.verify()
    assert not verdict.ok and verdict.rows == 4
    assert f"its head ({_head(store)}) has no MAC" in verdict.problem

    again = reopen()  # the server restarts: the old format is not accepted a second time
    assert "has no MAC" in again.audit.verify().problem
    again.audit.append(user="bob", team="nlp", action="submit", target="job-000007",
                       address="127.0.0.1")  # fmt: skip
    verdict = again.audit.verify()
    assert not verdict.ok and verdict.seq == 5
    assert verdict.problem.startswith("the trail was found broken when row 5 was appended: ")
    assert "has no MAC" in verdict.problem


def test_removing_every_row_and_the_head_is_caught(queue):
    """(b) An empty trail with no head would look like a queue nobody used; the head is
    written with the key at the first open, so its absence is the attack."""
    store, reopen = queue
    _write_rows(store, 3)
    _tamper(store, "DELETE FROM audit")
    _head(store).unlink()

    verdict = store.audit.verify()
    assert not verdict.ok and verdict.rows == 0
    assert verdict.problem.startswith(f"the trail has 0 rows but its head ({_head(store)}) is gone")
    assert "is gone" in reopen().audit.verify().problem


def test_removing_every_row_under_the_real_head_is_caught_and_stays_a_gap(queue):
    """The head still names row 3; the next append continues after it, so the removed
    rows stay a gap the chain walk names."""
    store, _ = queue
    _write_rows(store, 3)
    _tamper(store, "DELETE FROM audit")
    verdict = store.audit.verify()
    assert not verdict.ok and verdict.seq == 3
    assert "the trail ends at row 0 but its head" in verdict.problem

    assert store.audit.append(user="bob", team="nlp", action="submit", target="job-000004",
                              address="127.0.0.1").seq == 4  # fmt: skip
    verdict = store.audit.verify()
    assert not verdict.ok and verdict.problem == "row 1 is missing (the next row is 4)"


@pytest.mark.parametrize("forge", ["edit the sealed head", "seal with a guessed key"])
def test_a_forged_head_is_caught(queue, forge):
    """(c) Cut row 4 and make the head name row 3: by editing the real head (its seal no
    longer matches) or by sealing it anew with a key the attacker guessed."""
    store, _ = queue
    _write_rows(store, 4)
    row_3 = store.audit.entries()[2]
    _tamper(store, "DELETE FROM audit WHERE seq = 4")
    head = json.loads(_head(store).read_text())
    head.update(seq=3, rows=3, row_mac=row_3.mac)
    if forge == "seal with a guessed key":
        import hashlib
        import hmac

        values = [3, 3, row_3.mac, None, None]
        message = HEAD_FILE.encode() + b"\n" + json.dumps(values).encode()
        head["head_mac"] = hmac.new(b"\0" * 32, message, hashlib.sha256).hexdigest()
    _head(store).write_text(json.dumps(head))

    verdict = store.audit.verify()
    assert not verdict.ok
    assert verdict.problem.endswith(f"its head ({_head(store)}) does not match its MAC: it was "
                                    "forged or edited")  # fmt: skip


def test_an_older_release_queue_is_sealed_once_keeping_its_claim(queue, tmp_path):
    """The previous release's key (bare hex) and unsealed head are upgraded at the first
    open: a whole trail still verifies; rows cut before the upgrade still fail."""
    store, reopen = queue
    _write_rows(store, 6)
    key = bytes.fromhex(json.loads((store.path.parent / KEY_FILE).read_text())["key"])
    entries = store.audit.entries()

    def older_release(seq: int) -> None:
        (store.path.parent / KEY_FILE).write_text(key.hex())
        _head(store).write_text(json.dumps({"seq": seq, "mac": entries[seq - 1].mac}))

    older_release(6)
    upgraded = reopen()
    assert upgraded.audit.verify().ok
    assert json.loads((store.path.parent / KEY_FILE).read_text()) == {"format": 2,
                                                                      "key": key.hex()}  # fmt: skip
    assert "head_mac" in json.loads(_head(store).read_text())

    older_release(6)
    _tamper(store, "DELETE FROM audit WHERE seq > 4")  # cut while the older release ran
    verdict = reopen().audit.verify()
    assert not verdict.ok and verdict.seq == 6
    assert "the trail ends at row 4 but its head" in verdict.problem


def test_a_flood_of_unauthenticated_calls_writes_no_row_and_few_log_lines(tenancy, caplog):
    """(d) 50 POSTs without a valid token: each is a 401, the audit trail does not grow,
    and the server's log says so once (with how many it held back, on its next line)."""
    api = tenancy.serve()
    before = len(tenancy.store.audit.entries())
    body = submit_body(spec_text("nlp-flood", "rows.csv"))
    caplog.set_level(logging.WARNING, logger="orch.server")
    statuses = set()
    for i in range(50):
        headers = {"Authorization": "Bearer orch_0000000_nonsense"} if i % 2 else {}
        statuses.add(api.anon.post("/jobs", json=body, headers=headers).status_code)
    assert statuses == {401}
    assert len(tenancy.store.audit.entries()) == before
    assert tenancy.store.audit.verify().ok
    lines = [r.getMessage() for r in caplog.records if "unauthenticated" in r.getMessage()]
    assert 1 <= len(lines) <= 2
    assert lines[0].startswith("refused an unauthenticated POST '/jobs' (401: ")
    assert lines[0].endswith("from 127.0.0.1")


def test_rotating_source_addresses_does_not_lift_the_log_limit(caplog):
    """A caller on the head can send from any loopback address: the lines stay capped, and
    the next one says how many were held back."""
    now = [0.0]
    logger = logging.getLogger("tests.refusals")
    caplog.set_level(logging.WARNING, logger=logger.name)
    refusals = RefusalLog(logger, quiet_s=10, burst=3, remember=64, clock=lambda: now[0])
    for i in range(1000):
        refusals.refused(f"127.0.{i // 256}.{i % 256}", "a call")
    assert refusals.refused("127.0.0.1", "a call") is False  # same address, same window
    assert len(caplog.records) == 3
    now[0] = 10.5
    assert refusals.refused("127.9.9.9", "a call") is True
    assert caplog.records[-1].getMessage() == (
        "refused a call from 127.9.9.9 (998 more refused since the last such line)"
    )


def test_the_admin_name_in_a_cli_row_is_the_os_user_not_the_environment(
    tmp_path, monkeypatch, umask_kept
):
    """(e) ``USER=root LOGNAME=root orch users add ...`` on the head: the row names the
    account that ran it."""
    from orchestrator.cli import main

    forged = "root" if OS_USER != "root" else "mallory"
    for variable in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.setenv(variable, forged)
    where = ["--state-dir", str(tmp_path / "queue")]
    assert main(["users", "add", "root", "--team", "admins", "--role", "admin", *where]) == 0
    store = JobStore(tmp_path / "queue" / "queue.db")
    try:
        [row] = store.audit.entries()
        assert (row.user, row.action, row.target) == (f"cli:{OS_USER}", "users.add", "root")
        assert forged not in row.user
    finally:
        store.close()


# `orch server` as it runs on the head, with Ray replaced by a cluster of 4 idle CPUs; what
# the server hands Ray for a job (its driver's command and environment) goes to argv[2].
SERVER_WITHOUT_RAY = """
import json, sys
from orchestrator.scheduling import server
from orchestrator.scheduling.ray_jobs import ClusterResources

class IdleRay:
    total = {"CPU": 4.0, "memory": 8.0 * 2**30}
    def resources(self):
        return ClusterResources(total=self.total, available=self.total, nodes=[self.total])
    def submit(self, submission_id, entrypoint, env_vars, metadata):
        with open(sys.argv[2], "w") as f:
            json.dump({"entrypoint": entrypoint, "env_vars": env_vars}, f)
        return True
    def status(self, submission_id): return "PENDING", ""
    def running(self): return []
    def stop(self, submission_id): pass
    def logs(self, submission_id): return ""

server._connect = lambda address: "http://127.0.0.1:9"
server.RayJobs = lambda url: IdleRay()
sys.exit(server.serve_forever(sys.argv[1], poll_s=0.2))
"""
SPEC = """\
name: iris-private
data: {source: sklearn://iris}
model: {type: mlp, params: {hidden_sizes: [8]}}
train: {epochs: 1, batch_size: 16, workers: 1, resources_per_worker: {CPU: 1}}
"""


def _orch(env: dict, *argv: str) -> str:
    """``orch ...`` as its own process, started with a permissive umask (022)."""
    done = subprocess.run([sys.executable, "-m", "orchestrator", *argv], env=env, cwd=REPO,
                          umask=0o022, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _open_to_others(home: Path) -> list[str]:
    """Everything under ``home`` (itself included) that is not 0700 (folders) or 0600."""
    found = []
    for path in [home, *sorted(home.rglob("*"))]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            found.append(f"{path.relative_to(home.parent)} {mode:o}")
    return found


def _queue_with_a_job(tmp_path: Path) -> tuple[Path, dict, dict]:
    """A fresh ORCH_HOME where ``orch users add`` made the queue and ``orch server`` (each
    its own process, started with umask 022) admitted a job; checks the modes while the
    server runs (server.json is gone after). Returns the home, the environment of orch's
    processes, and what the server handed Ray for the job."""
    home = tmp_path / "fresh" / "orch"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ORCH_SERVER")}
    env["ORCH_HOME"] = str(home)
    state = home / "queue"
    made = _orch(env, "users", "add", "root", "--team", "admins", "--role", "admin", "--json",
                 "--state-dir", str(state))  # fmt: skip
    token = json.loads(made.splitlines()[-1])["token"]
    submitted, log_path = tmp_path / "submitted.json", tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER_WITHOUT_RAY, str(state), str(submitted)],
            env=env, cwd=REPO, umask=0o022, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        info = wait_for(lambda: _read_json(state / "server.json"), 120, "the server to answer",
                        explain=log_path.read_text)  # fmt: skip
        body = {**submit_body(SPEC), "cwd": str(tmp_path)}
        answer = httpx.post(f"{info['url']}/jobs", json=body, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert answer.status_code == 201, answer.text
        handed_to_ray = wait_for(lambda: _read_json(submitted), 60, "the job to be admitted")
        assert (state / "jobs" / answer.json()["id"] / "plan.json").exists()
        assert _open_to_others(home) == []  # server.json and server.lock included
    finally:
        server.terminate()
        server.wait(timeout=60)
    return home, env, handed_to_ray


def test_the_state_orch_writes_is_its_users_only(tmp_path):
    """(f) ``orch users add``, ``orch server`` with a job admitted, and the MLflow store an
    ``orch run`` opens (``orch models list`` opens the same one), each as its own process
    started with umask 022: every file under ORCH_HOME is 0600 and every folder 0700
    (queue.db and its WAL, the audit files, the server's lock and address, the job's folder
    and plan, MLflow's database)."""
    home, env, _ = _queue_with_a_job(tmp_path)
    _orch(env, "models", "list", "--json")
    assert (home / "mlflow.db").exists()
    assert _open_to_others(home) == []


@pytest.mark.slow
def test_a_queued_jobs_driver_keeps_its_runs_and_artifacts_private(tmp_path):
    """(f, whole) The driver command the server hands Ray, run as Ray would (its shell,
    umask 022): the job's MLflow store, artifacts, checkpoints and outcome are private."""
    home, env, handed_to_ray = _queue_with_a_job(tmp_path)
    done = subprocess.run(["/bin/sh", "-c", handed_to_ray["entrypoint"]], umask=0o022,
                          env={**env, **handed_to_ray["env_vars"]}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for made in ("mlflow.db", "mlartifacts", "runs"):
        assert (home / made).exists(), made
    assert _open_to_others(home) == []


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
