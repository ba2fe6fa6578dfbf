"""Queue users on the real token-auth head and the real server: members act on their own
jobs only, admins on all, every change (refusals too) lands in a verifiable audit trail."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from orchestrator.cli import main
from orchestrator.queue_client import QueueClient
from orchestrator.scheduling.store import JobStore
from tests.helpers import wait_for, write

pytestmark = pytest.mark.slow

IRIS = """\
name: {who}
data: {source: sklearn://iris}
model: {type: mlp, params: {hidden_sizes: [8]}}
train: {epochs: 2, batch_size: 16, workers: 1, resources_per_worker: {CPU: 1}}
"""


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_members_act_on_their_own_jobs_and_every_change_is_audited(
    queue_client, orch_home, monkeypatch, capsys
):
    url = queue_client.server_url()
    store = JobStore(queue_client.state_dir / "queue.db")
    ids = store.identities
    root = ids.add_user("root", "admins", "admin").token
    ids.add_team("vision")
    ids.add_team("nlp")
    alice = ids.add_user("alice", "vision", "member").token
    bob = ids.add_user("bob", "nlp", "member").token

    anonymous = httpx.get(f"{url}/jobs", timeout=10)
    assert anonymous.status_code == 401 and "this queue has users" in anonymous.json()["detail"]

    # alice submits through the SDK with her token, reaching the server by its URL
    monkeypatch.setenv("ORCH_TOKEN", alice)
    job = QueueClient(server=url).submit(write(orch_home, "a", IRIS.replace("{who}", "vision-a")))
    assert (job.info.owner, job.info.team) == ("alice", "vision")

    seen = httpx.get(f"{url}/jobs/{job.id}", headers=_as(bob), timeout=10).json()
    assert seen["owner"] == "alice" and seen["spec_text"] == "" and seen["env"] == {}
    before = store.get(job.id).state
    refused = httpx.post(f"{url}/jobs/{job.id}/cancel", headers=_as(bob), timeout=10)
    assert refused.status_code == 403 and "belongs to alice" in refused.json()["detail"]
    logs = httpx.get(f"{url}/jobs/{job.id}/logs", headers=_as(bob), timeout=10)
    assert logs.status_code == 403
    assert store.get(job.id).state in (before, "starting", "running", "succeeded")  # not cancelled

    cancelled = httpx.post(f"{url}/jobs/{job.id}/cancel", headers=_as(root), timeout=30)
    assert cancelled.status_code == 200 or "already" in cancelled.text
    wait_for(lambda: store.get(job.id).terminal, 120, f"{job.id} to end")
    # bob may not retry it either; the admin reads its logs and retries it
    refused = httpx.post(f"{url}/jobs/{job.id}/retry", headers=_as(bob), timeout=10)
    assert refused.status_code == 403 and "belongs to alice" in refused.json()["detail"]
    if store.get(job.id).state in ("failed", "cancelled"):
        again = httpx.post(f"{url}/jobs/{job.id}/retry", headers=_as(root), timeout=30)
        assert again.status_code == 201 and again.json()["owner"] == "alice"  # still hers
        httpx.post(f"{url}/jobs/{again.json()['id']}/cancel", headers=_as(root), timeout=30)
        wait_for(lambda: store.get(again.json()["id"]).terminal, 120, "the retry to end")
    read = httpx.get(f"{url}/jobs/{job.id}/logs", headers=_as(root), timeout=30)
    assert read.status_code == 200 and read.json()["state"] == store.get(job.id).state

    # quotas on the real server: vision may hold 1 CPU; its second job waits for vision
    # alone while nlp's job starts beside its first (2 CPUs)
    ids.set_quota("vision", cpus=1)
    spec = IRIS.replace("epochs: 2", "epochs: 40")
    as_alice = QueueClient(server=url)
    mine = [
        as_alice.submit(write(orch_home, f"v{i}", spec.replace("{who}", f"vision-{i}")))
        for i in (1, 2)
    ]
    monkeypatch.setenv("ORCH_TOKEN", bob)
    theirs = QueueClient(server=url).submit(write(orch_home, "n", spec.replace("{who}", "nlp-1")))
    wait_for(lambda: store.get(theirs.id).started_at is not None, 120, "nlp's job to start")
    waiting = store.get(mine[1].id)
    assert waiting.state == "queued"
    assert waiting.reason.startswith("quota: team vision holds CPU 1 of 1"), waiting.reason
    for done in (*mine, theirs):
        httpx.post(f"{url}/jobs/{done.id}/cancel", headers=_as(root), timeout=30)
    wait_for(lambda: all(store.get(j.id).terminal for j in (*mine, theirs)), 120, "jobs to end")

    main(["users", "revoke", "bob", "--state-dir", str(queue_client.state_dir)])
    assert httpx.get(f"{url}/jobs", headers=_as(bob), timeout=10).status_code == 401

    capsys.readouterr()
    assert main(["audit", "--json", "--state-dir", str(queue_client.state_dir)]) == 0
    listed = json.loads(capsys.readouterr().out)
    trail = [(e["user"], e["action"], e["target"], e["outcome"].split(":")[0]) for e in listed]
    assert ("alice", "submit", job.id, "ok") in trail
    assert ("bob", "retry", job.id, "refused (403)") in trail
    assert ("bob", "cancel", job.id, "refused (403)") in trail
    assert ("root", "cancel", job.id, "ok") in trail
    assert ("orch:scheduler", "admit", job.id, "ok") in trail  # the scheduler's decisions too
    assert trail[-1][1:3] == ("users.revoke", "bob")
    capsys.readouterr()
    assert main(["audit", "--verify", "--state-dir", str(queue_client.state_dir)]) == 0

    refused_row = next(e.seq for e in store.audit.entries() if e.user == "bob")
    db = sqlite3.connect(queue_client.state_dir / "queue.db")
    db.execute("UPDATE audit SET outcome = 'ok' WHERE seq = ?", (refused_row,))
    db.commit()
    db.close()
    capsys.readouterr()
    assert main(["audit", "--verify", "--state-dir", str(queue_client.state_dir)]) == 1
    assert f"row {refused_row} was changed" in capsys.readouterr().out
    store.close()


def test_kill_9_between_admission_and_submit_with_quotas_and_a_restart_keeping_users(
    queue_client, queue_head, orch_home, monkeypatch
):
    """With vision capped at 1 CPU: the server is killed (SIGKILL) right after it records
    vision's first admission and before the Ray job is submitted. The next server submits
    that job exactly once, keeps the second waiting for vision's quota, and still knows the
    users (alice's token), the quotas and the audit trail, which verifies whole."""
    import signal
    import subprocess
    import sys

    from ray.job_submission import JobSubmissionClient

    state = queue_client.state_dir
    url = queue_client.server_url()  # the cluster's server (a Ray job), as users find it
    store = JobStore(state / "queue.db")
    ids = store.identities
    root = ids.add_user("root", "admins", "admin").token
    ids.add_team("vision")
    alice = ids.add_user("alice", "vision", "member").token
    ids.set_quota("vision", running=0)  # hold both jobs in the queue while the server changes
    monkeypatch.setenv("ORCH_TOKEN", alice)
    spec = IRIS.replace("epochs: 2", "epochs: 60")
    as_alice = QueueClient(server=url)
    first, second = (
        as_alice.submit(write(orch_home, f"k{i}", spec.replace("{who}", f"vision-k{i}")))
        for i in (1, 2)
    )
    wait_for(lambda: "runs 0 of 0" in (store.get(second.id).reason or ""), 60, "a quota wait")
    from tests.helpers import kill_server

    server_pid = kill_server(state, signal.SIGTERM)
    wait_for(lambda: not (state / "server.json").exists(), 60, "the server to stop")
    assert server_pid is not None

    ids.set_quota("vision", running=None, cpus=1)  # now one vision job may start
    env = {**queue_head.env(), "ORCH_FAULT": "kill-after-admit-record"}
    command = [sys.executable, "-m", "orchestrator", "server", "--state-dir", str(state),
               "--ray-address", queue_head.gcs_address]  # fmt: skip
    crashed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    recorded = store.get(first.id)
    assert recorded.state == "starting" and recorded.submission_ids == [recorded.submission_id]
    ray_jobs = JobSubmissionClient(queue_head.dashboard_url, headers=queue_client.headers)
    submitted = {j.submission_id for j in ray_jobs.list_jobs()}
    assert recorded.submission_id not in submitted  # killed before Ray heard of it
    assert store.get(second.id).state == "queued"

    # the next server (started on the next call, as a Ray job) adopts the recorded admission
    queue_client._url = None
    url = queue_client.server_url()
    wait_for(lambda: store.get(first.id).state == "running", 120, "the admitted job to run")
    assert store.get(first.id).submission_ids == [recorded.submission_id]  # started once
    same = [j for j in ray_jobs.list_jobs() if j.submission_id == recorded.submission_id]
    assert len(same) == 1
    waiting = store.get(second.id)
    assert waiting.state == "queued" and waiting.reason.startswith(
        "quota: team vision holds CPU 1 of 1"
    ), waiting.reason

    # users, quotas and the trail outlived both servers
    mine = httpx.get(f"{url}/jobs/{first.id}", headers=_as(alice), timeout=10)
    assert mine.status_code == 200 and mine.json()["owner"] == "alice"
    assert ids.team("vision").quota.cpus == 1
    trail = [(e.user, e.action, e.target) for e in store.audit.entries()]
    assert ("alice", "submit", first.id) in trail and ("alice", "submit", second.id) in trail
    assert trail.count(("orch:scheduler", "admit", first.id)) == 1
    for job in (first, second):
        httpx.post(f"{url}/jobs/{job.id}/cancel", headers=_as(root), timeout=30)
    wait_for(lambda: all(store.get(j.id).terminal for j in (first, second)), 120, "jobs to end")
    assert store.audit.verify().ok
    store.close()
