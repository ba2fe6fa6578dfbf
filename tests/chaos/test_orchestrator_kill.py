"""Chaos: the orchestrator dies between recording an admission and submitting it to Ray.

(Killing it while jobs are queued and running is in tests/orchestrator/test_queue.py, in
the middle of its priority story.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from orchestrator.scheduling.record import JobInfo
from orchestrator.scheduling.store import JobStore
from tests.helpers import alive, explain_queue, kill_server, wait_for, write

pytestmark = pytest.mark.slow

IRIS = """\
name: t
data: {source: sklearn://iris}
model: {type: mlp, params: {hidden_sizes: [16]}}
train: {epochs: 3, batch_size: 16, workers: 1, resources_per_worker: {CPU: 1}}
scheduling: {priority: low}
"""


def test_restart_in_the_write_ahead_window_and_the_cli(queue_client, queue_head, orch_home):
    """A job recorded as starting whose Ray job was never submitted (the orchestrator died
    between the two steps) is submitted by the next server; once submitted it is adopted by
    the one after, not started again. The CLI shows the same jobs as the SDK."""
    client, ray_head = queue_client, queue_head
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

    def wait(check, timeout_s: float, what: str, *jobs):
        return wait_for(check, timeout_s, what, explain=lambda: explain_queue(client, *jobs))

    spec = write(orch_home, "tiny", IRIS)
    submitted = json.loads(orch("submit", str(spec), "--json", "--priority", "7").stdout)
    assert submitted["priority"] == 7
    assert submitted["demand"] == {"CPU": 1.0, "memory": 2**30}  # 1 GiB charged per worker
    orch("cancel", submitted["id"])
    cancelled = client.job(submitted["id"])
    wait(lambda: cancelled.refresh().terminal, 60, "the job to be cancelled", cancelled)
    assert cancelled.info.state == "cancelled"
    server_pid = kill_server(client.state_dir, signal.SIGKILL)
    wait_for(lambda: not alive(server_pid), 30, "the server to die")

    # As if the server died right after writing the admission, before Ray heard of it.
    store = JobStore(client.state_dir / "queue.db")
    crashed = JobInfo.model_validate(
        {
            **store.get(submitted["id"]).model_dump(),
            **{"id": "", "history": [], "preemptions": 0, "idempotency_key": None},
        }
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
    wait(lambda: handle.refresh().state == "running", 120, "the recorded job to run", handle)
    kill_server(client.state_dir, signal.SIGKILL)
    client._url = None
    assert handle.refresh().state in ("running", "succeeded")  # adopted by the third server
    wait(lambda: handle.refresh().terminal, 300, "the recorded job to finish", handle)
    assert handle.info.state == "succeeded"
    assert handle.info.submission_ids == [crashed.submission_id]

    status = orch("status", crashed.id).stdout
    assert status.startswith(f"{crashed.id}  t  succeeded: finished: ")
    assert "demand {CPU 1, memory 1 GiB}" in status
    assert f"Ray jobs: {crashed.submission_id}" in status
    assert "Running entrypoint for job" in orch("logs", crashed.id).stdout
    listed = orch("list", "--state", "succeeded").stdout.splitlines()
    assert [line.split()[0] for line in listed[1:]] == [crashed.id]
    refused = orch("retry", crashed.id, code=1)
    assert refused.stderr.strip() == (
        f"error: {crashed.id} is succeeded; only failed or cancelled jobs are retried"
    )
