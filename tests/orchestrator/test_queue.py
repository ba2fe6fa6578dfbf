"""The job queue on a real Ray head (2 CPUs, token auth on), driven like the README does.

One story, because every job costs Ray Train's start-up: a low-priority job is preempted by
a high one and later resumes from its checkpoint; a small job waits behind a bigger one
that does not fit yet; the orchestrator is killed and restarted without losing or
repeating a job; cancel works queued and running; retry resubmits; idempotency keys hold.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pytest

from cluster.local import start_head
from orchestrator.exceptions import SpecError
from orchestrator.queue_client import QueueClient
from orchestrator.scheduling.record import JobInfo
from orchestrator.scheduling.store import JobStore

pytestmark = pytest.mark.slow

IRIS = """\
name: {name}
data: {{source: sklearn://iris}}
model: {{type: mlp, params: {{hidden_sizes: [16]}}}}
train: {{epochs: 3, batch_size: 16, workers: {workers}, resources_per_worker: {{CPU: 1}}}}
scheduling: {{priority: {priority}}}
"""
LONG = """\
name: long
data: {source: sklearn://digits}
model: {type: mlp, params: {hidden_sizes: [64]}}
train: {epochs: 40, batch_size: 64, workers: 2, resources_per_worker: {CPU: 1}}
scheduling: {priority: low}
"""


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    state = tmp_path_factory.mktemp("queue-head")
    head = start_head(state, num_cpus=2)
    servers: list[Path] = []
    yield head, servers
    for queue_dir in servers:  # the queue servers we started, by their recorded PIDs
        _kill_server(queue_dir, signal.SIGTERM)
    head.stop()


def _kill_server(queue_dir: Path, sig) -> int | None:
    try:
        pid = json.loads((queue_dir / "server.json").read_text())["pid"]
        os.kill(pid, sig)
        return pid
    except (OSError, ValueError, KeyError):
        return None


def wait_for(check, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def client(head, orch_home, monkeypatch):
    ray_head, servers = head
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", ray_head.token_path)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.chdir(orch_home)
    queue = QueueClient(ray_head.dashboard_url)
    servers.append(queue.state_dir)
    return queue


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def epochs_logged(run_name: str) -> int:
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"attributes.run_name = '{run_name}'",
        output_format="list",
    )
    return int(max((r.data.metrics.get("epoch", 0) for r in runs), default=0))


def admitted_at(job: JobInfo, attempt: int) -> float:
    starts = [t.at for t in job.history if t.state == "starting"]
    return starts[attempt - 1]


def test_priorities_preemption_restart_cancel_and_retry(client, head, orch_home):
    ray_head, _ = head
    folder = orch_home
    urgent = write(folder, "urgent", IRIS.format(name="urgent", workers=2, priority="high"))
    small = write(folder, "small", IRIS.format(name="small", workers=1, priority="normal"))
    tiny = write(folder, "tiny", IRIS.format(name="tiny", workers=1, priority="low"))
    huge = write(folder, "huge", IRIS.format(name="huge", workers=4, priority="high"))

    # A job that can never fit 2 CPUs is refused at submit, with the reason.
    with pytest.raises(SpecError, match=r"can never run here: it needs \{CPU 4\} at once but"):
        client.submit(huge)
    # The server asks for Ray's token like the cluster does.
    anonymous = httpx.get(f"{client.server_url()}/jobs", timeout=10)
    assert anonymous.status_code == 401 and "Ray token" in anonymous.json()["detail"]

    # 1. A low-priority 2-CPU job runs alone ...
    long = client.submit(write(folder, "long", LONG))
    assert long.info.demand == {"CPU": 2.0} and long.info.priority == 0
    wait_for(lambda: epochs_logged(long.info.run_name) >= 3, 240, "long to train 3 epochs")

    # 2. ... until a high one arrives: it is preempted (requeued, not failed).
    first = client.submit(urgent, idempotency_key="urgent-1")
    again = client.submit(urgent, idempotency_key="urgent-1")
    assert again.id == first.id  # one key, one job
    wait_for(lambda: long.refresh().state == "queued", 60, "long to be preempted and requeued")
    assert long.info.preemptions == 1 and "preempted" in long.info.reason
    wait_for(lambda: first.refresh().state == "running", 60, "urgent to run")

    # 3. While urgent runs: a normal 1-CPU job, and a low 1-CPU one submitted after long.
    normal = client.submit(small)
    late_low = client.submit(tiny)
    cancelled_queued = client.submit(tiny, name="never-runs")
    assert client.cancel(cancelled_queued.id).state == "cancelled"
    assert cancelled_queued.refresh().submission_ids == []  # never reached Ray

    order = [job.id for _, job in client.queue()]
    assert order == [normal.id, long.id, late_low.id]  # priority, then FIFO among the lows

    # 4. Kill the orchestrator while jobs run and wait; the next call starts a new one.
    killed = _kill_server(client.state_dir, signal.SIGKILL)
    assert killed is not None
    client._url = None
    listed = {job.id: job for job in client.jobs()}
    assert set(listed) == {long.id, first.id, normal.id, late_low.id, cancelled_queued.id}
    new_pid = json.loads((client.state_dir / "server.json").read_text())["pid"]
    assert new_pid != killed

    # 5. The small low job waits behind long (which needs both CPUs) instead of jumping it.
    wait_for(lambda: normal.refresh().state == "running", 300, "normal to run")

    def reason_of(job_id: str) -> str:
        return next((j.reason for _, j in client.queue() if j.id == job_id), "")

    # one CPU is free and late_low needs one, but long (2 CPUs) is ahead of it
    assert wait_for(
        lambda: reason_of(late_low.id).startswith(f"behind {long.id} (low)"), 30, "the reason"
    )
    assert late_low.refresh().state == "queued"

    # 6. long resumes from its checkpoint, not from epoch 0, and finishes.
    assert long.wait(timeout=600).state == "succeeded"
    result = long.result()
    assert result.metrics["epoch"] == 40
    assert result.resumed_from_epochs and min(result.resumed_from_epochs) >= 2
    assert result.metrics["val_accuracy"] > 0.9
    assert first.wait(timeout=60).state == "succeeded" and normal.wait(60).state == "succeeded"

    # Admission order: long, urgent (preempting long), normal, long again, then late_low.
    jobs = {j.id: j for j in client.jobs()}
    assert (
        admitted_at(jobs[long.id], 1)
        < admitted_at(jobs[first.id], 1)
        < admitted_at(jobs[normal.id], 1)
        < admitted_at(jobs[long.id], 2)
        <= admitted_at(late_low.refresh(), 1)
    )

    # 7. Cancel a running job: its Ray job stops and its CPU is free again.
    wait_for(lambda: late_low.refresh().state == "running", 120, "late_low to run")
    client.cancel(late_low.id)
    assert late_low.wait(timeout=60).state == "cancelled"
    wait_for(lambda: client.cluster()["available"].get("CPU", 0) >= 2.0, 60, "the CPUs to be free")

    # 8. Retry resubmits the original spec as a new job.
    retried = late_low.retry()
    assert retried.info.retry_of == late_low.id and retried.id != late_low.id
    assert retried.info.spec_text == tiny.read_text()
    client.cancel(retried.id)
    assert retried.wait(timeout=60).state == "cancelled"

    # Nothing ran twice: Ray has exactly the submissions each job recorded.
    from ray.job_submission import JobSubmissionClient

    ray_jobs = JobSubmissionClient(ray_head.dashboard_url, headers=client.headers).list_jobs()
    by_job: dict[str, list[str]] = {}
    for details in ray_jobs:
        orch_job = (details.metadata or {}).get("orch_job")
        if orch_job:
            by_job.setdefault(orch_job, []).append(details.submission_id)
    for job in client.jobs():
        assert sorted(by_job.get(job.id, [])) == sorted(job.submission_ids), job.id
    assert len(jobs[long.id].submission_ids) == 2
    assert all(len(jobs[j].submission_ids) == 1 for j in (first.id, normal.id))


def test_restart_in_the_write_ahead_window_and_the_cli(client, head, orch_home):
    """A job recorded as starting whose Ray job was never submitted (the orchestrator died
    between the two steps) is submitted by the next server; once submitted it is adopted by
    the one after, not started again. The CLI shows the same jobs as the SDK."""
    ray_head, _ = head
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": ray_head.token_path}
    address = ["--address", ray_head.dashboard_url]

    def orch(*args, code: int = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator", *args, *address],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == code, proc.stderr
        return proc

    spec = write(orch_home, "tiny", IRIS.format(name="t", workers=1, priority="low"))
    submitted = json.loads(orch("submit", str(spec), "--json", "--priority", "7").stdout)
    assert submitted["priority"] == 7 and submitted["demand"] == {"CPU": 1.0}
    orch("cancel", submitted["id"])
    assert client.job(submitted["id"]).wait(timeout=60).state == "cancelled"
    server_pid = _kill_server(client.state_dir, signal.SIGKILL)
    wait_for(lambda: not _alive(server_pid), 30, "the server to die")

    # As if the server died right after writing the admission, before Ray heard of it.
    store = JobStore(client.state_dir / "queue.db")
    crashed = JobInfo.model_validate(
        {**store.get(submitted["id"]).model_dump(), "id": "", "history": [], "preemptions": 0}
    )
    crashed = store.add(crashed)
    crashed.run_name = f"t-{crashed.id}"
    crashed.attempt = 1
    crashed.submission_id = f"orch-{store.queue_id}-{crashed.id}-1"
    crashed.submission_ids = [crashed.submission_id]
    crashed.moved("starting", "admitted (attempt 1)")
    store.save(crashed)
    store.close()

    client._url = None
    handle = client.job(crashed.id)  # starts a new server, which reconciles
    wait_for(lambda: handle.refresh().state == "running", 120, "the recorded job to run")
    _kill_server(client.state_dir, signal.SIGKILL)
    client._url = None
    assert handle.refresh().state in ("running", "succeeded")  # adopted by the third server
    assert handle.wait(timeout=300).state == "succeeded"
    assert handle.info.submission_ids == [crashed.submission_id]

    status = orch("status", crashed.id).stdout
    assert status.startswith(f"{crashed.id}  t  succeeded: finished: ")
    assert "demand {CPU 1}" in status and f"Ray jobs: {crashed.submission_id}" in status
    assert "Running entrypoint for job" in orch("logs", crashed.id).stdout
    listed = orch("list", "--state", "succeeded").stdout.splitlines()
    assert [line.split()[0] for line in listed[1:]] == [crashed.id]
    refused = orch("retry", crashed.id, code=1)
    assert refused.stderr.strip() == (
        f"error: {crashed.id} is succeeded; only failed or cancelled jobs are retried"
    )


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
