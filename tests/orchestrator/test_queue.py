"""The job queue on a real Ray head (2 CPUs, token auth on), driven like the README does.

One story, because every job costs Ray Train's start-up: a low-priority job is preempted by
a high one and later resumes from its checkpoint; a small job waits behind a bigger one
that does not fit yet; the orchestrator is killed and restarted without losing or
repeating a job; cancel works queued and running; retry resubmits; idempotency keys hold.
Each phase is a ``phase(...)`` block: a failure says which one it was.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import mlflow
import pytest

from orchestrator.exceptions import SpecError
from orchestrator.scheduling.record import JobInfo
from tests.helpers import explain_queue as explain
from tests.helpers import kill_server, phase, wait_for, write

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
model: {type: mlp, params: {hidden_sizes: [256, 256]}}
train: {epochs: 100, batch_size: 64, workers: 1, resources_per_worker: {CPU: 2}}
scheduling: {priority: low}
"""


def epochs_logged(run_name: str) -> int:
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"attributes.run_name = '{run_name}'",
        output_format="list",
    )
    return int(max((r.data.metrics.get("epoch", 0) for r in runs), default=0))


def checkpoints_registered(home: Path, run_name: str) -> int:
    """Complete checkpoints of the run (what a restart would resume from), either runner's."""
    from jobs.local import checkpoint_epoch

    run_dir = home / "runs" / run_name
    return sum(checkpoint_epoch(path) is not None for path in run_dir.glob("checkpoint_*"))


def admitted_at(job: JobInfo, attempt: int) -> float:
    starts = [t.at for t in job.history if t.state == "starting"]
    return starts[attempt - 1]


def test_priorities_preemption_restart_cancel_and_retry(queue_client, queue_head, orch_home):
    client, ray_head = queue_client, queue_head
    folder = orch_home
    urgent = write(folder, "urgent", IRIS.format(name="urgent", workers=1, priority="high"))
    small = write(folder, "small", IRIS.format(name="small", workers=1, priority="normal"))
    tiny = write(folder, "tiny", IRIS.format(name="tiny", workers=1, priority="low"))
    huge = write(folder, "huge", IRIS.format(name="huge", workers=4, priority="high"))

    def wait(check, timeout_s: float, what: str, *jobs):
        return wait_for(check, timeout_s, what, explain=lambda: explain(client, *jobs))

    with phase("0, refusals: a job that can never fit, a call without Ray's token"):
        # A job that can never fit 2 CPUs is refused at submit, with the reason.
        with pytest.raises(SpecError, match=r"never run here: it needs \{CPU 4, memory 4 GiB\}"):
            client.submit(huge)
        # The server asks for Ray's token like the cluster does.
        anonymous = httpx.get(f"{client.server_url()}/jobs", timeout=10)
        assert anonymous.status_code == 401 and "Ray token" in anonymous.json()["detail"]

    with phase("1, a low-priority 2-CPU job runs alone"):
        # 1. A low-priority 2-CPU job (one worker: the local runner) runs alone ...
        long = client.submit(write(folder, "long", LONG))
        assert long.info.demand == {"CPU": 2.0, "memory": 2**30}  # 1 GiB charged per worker
        assert long.info.priority == 0

        wait(lambda: epochs_logged(long.info.run_name) >= 3, 300, "long to train 3 epochs", long)
        # its checkpoints are registered a little after the epochs end: wait for one
        registered = lambda: checkpoints_registered(orch_home, long.info.run_name)  # noqa: E731
        wait(registered, 60, "a checkpoint", long)

    with phase("2, a high one preempts it"):
        # 2. ... until a high one arrives: it is preempted (requeued, not failed).
        first = client.submit(urgent, idempotency_key="urgent-1")
        again = client.submit(urgent, idempotency_key="urgent-1")
        assert again.id == first.id  # one key, one job
        requeued = lambda: long.refresh().state == "queued"  # noqa: E731
        wait(requeued, 60, "long to be preempted and requeued", long)
        assert long.info.preemptions == 1 and "preempted" in long.info.reason
        wait(lambda: first.refresh().state == "running", 120, "urgent to run", first, long)

    with phase("3, a normal job starts beside urgent; cancel while queued"):
        # 3. While urgent runs on 1 CPU: a normal 1-CPU job (it fits the other CPU and starts:
        # it outranks long, which needs both), and a low 1-CPU one submitted after long.
        normal = client.submit(small)
        late_low = client.submit(tiny)
        cancelled_queued = client.submit(tiny, name="never-runs")
        assert client.cancel(cancelled_queued.id).state == "cancelled"
        assert cancelled_queued.refresh().submission_ids == []  # never reached Ray

        beside = lambda: normal.refresh().state == "running"  # noqa: E731
        wait(beside, 300, "normal to run beside urgent", normal)
        order = [job.id for _, job in client.queue()]
        assert order == [long.id, late_low.id]  # FIFO among the lows

    with phase("4, the server killed and restarted"):
        # 4. Kill the orchestrator while jobs run and wait; the next call starts a new one.
        killed = kill_server(client.state_dir, signal.SIGKILL)
        assert killed is not None
        client._url = None
        listed = {job.id: job for job in client.jobs()}
        assert set(listed) == {long.id, first.id, normal.id, late_low.id, cancelled_queued.id}
        new_pid = json.loads((client.state_dir / "server.json").read_text())["pid"]
        assert new_pid != killed

    with phase("5, the small low job waits behind long"):
        # 5. The small low job waits behind long (which needs both CPUs) instead of jumping it,
        # even when one CPU is free: the admission order below says so whatever finishes
        # first (the reason it shows meanwhile is checked in test_queue_policy.py).
        wait(lambda: first.refresh().state == "succeeded", 300, "urgent to finish", first)

    with phase("6, long resumes from its checkpoint and finishes"):
        # 6. long resumes from its checkpoint, not from epoch 0, and finishes.
        wait(lambda: long.refresh().terminal, 600, "long to finish", long)
        assert long.info.state == "succeeded", explain(client, long)
        result = long.result()
        assert result.metrics["epoch"] == 100 and result.runner == "local"
        assert result.resumed_from_epochs and min(result.resumed_from_epochs) >= 2
        assert result.metrics["val_accuracy"] > 0.9
        tags = mlflow.MlflowClient().get_run(result.mlflow_run_id).data.tags
        assert (tags["orch.user"], tags["orch.team"]) == ("admin", "admins")  # the queue's owner
        wait(lambda: first.refresh().terminal and normal.refresh().terminal, 60, "urgent, normal")
        assert first.info.state == normal.info.state == "succeeded"

        # Admission order: long, urgent (preempting long), normal, long again, then late_low.
        jobs = {j.id: j for j in client.jobs()}
        assert (
            admitted_at(jobs[long.id], 1)
            < admitted_at(jobs[first.id], 1)
            < admitted_at(jobs[normal.id], 1)
            < admitted_at(jobs[long.id], 2)
            <= admitted_at(late_low.refresh(), 1)
        )

    with phase("7, cancel a running job"):
        # 7. Cancel a running job: its Ray job stops and its CPU is free again.
        wait(lambda: late_low.refresh().state == "running", 120, "late_low to run", late_low)
        client.cancel(late_low.id)
        wait(lambda: late_low.refresh().terminal, 60, "late_low to be cancelled", late_low)
        assert late_low.info.state == "cancelled"
        wait(lambda: client.cluster()["available"].get("CPU", 0) >= 2.0, 60, "the CPUs to be free")

    with phase("8, retry resubmits the original spec"):
        # 8. Retry resubmits the original spec as a new job.
        retried = late_low.retry()
        assert retried.info.retry_of == late_low.id and retried.id != late_low.id
        assert retried.info.spec_text == tiny.read_text()
        client.cancel(retried.id)
        wait(lambda: retried.refresh().terminal, 60, "the retried job to be cancelled", retried)
        assert retried.info.state == "cancelled"

    with phase("9, nothing ran twice on Ray"):
        # Nothing ran twice: Ray has exactly the submissions each job recorded (of this queue:
        # the head is shared with other tests' queues, and each numbers its jobs from 1).
        from ray.job_submission import JobSubmissionClient

        ray_jobs = JobSubmissionClient(ray_head.dashboard_url, headers=client.headers).list_jobs()
        queue_id = jobs[long.id].submission_ids[0].split("-")[1]  # orch-<queue>-<job>-<attempt>
        by_job: dict[str, list[str]] = {}
        for details in ray_jobs:
            metadata = details.metadata or {}
            orch_job = metadata.get("orch_job")
            if orch_job and metadata.get("orch_queue") == queue_id:
                by_job.setdefault(orch_job, []).append(details.submission_id)
        for job in client.jobs():
            assert sorted(by_job.get(job.id, [])) == sorted(job.submission_ids), job.id
        assert len(jobs[long.id].submission_ids) == 2

    with phase("10, the audit trail"):
        # the scheduler's admissions and its preemption are in the audit trail, chained whole
        from orchestrator.scheduling.store import JobStore

        store = JobStore(client.state_dir / "queue.db")
        decided = [(e.user, e.action, e.target) for e in store.audit.entries()]
        assert decided.count(("orch:scheduler", "admit", long.id)) == 2
        preempted = [e for e in store.audit.entries() if e.action == "preempt"]
        assert [(e.target, e.outcome.split(" of ")[0]) for e in preempted] == [
            (long.id, f"ok: for {first.id}")
        ]
        assert store.audit.verify().ok
        store.close()
        assert all(len(jobs[j].submission_ids) == 1 for j in (first.id, normal.id))
