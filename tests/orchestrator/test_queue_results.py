"""The queue reads each attempt's outcome from the file `orch run --result-file` writes,
never from the job's log (an exit 0 without one is a failure); a queue.db written before
the store had a schema version opens,
keeps its jobs and results, and is stamped with the current version."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.result_file import read_outcome, write_outcome
from orchestrator.scheduling.policy import create_policy
from orchestrator.scheduling.record import JobInfo
from orchestrator.scheduling.scheduler import Scheduler
from orchestrator.scheduling.store import SCHEMA_VERSION, JobStore, StoreVersionError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class _LogsOnly:
    """What the scheduler asks Ray for here: a job's log (with a stray last line)."""

    def __init__(self, logs: str):
        self.text = logs

    def logs(self, submission_id: str) -> str:
        return self.text


def _job(store: JobStore) -> JobInfo:
    job = JobInfo(id="", name="q", pipeline="q", priority=50, demand={"CPU": 1},
                  spec_path="q.yaml", cwd="/")  # fmt: skip
    store.add(job)
    job.attempt, job.submission_id = 1, "orch-x-job-000001-1"
    return job


def test_an_exit_0_without_an_outcome_fails_and_the_log_is_never_read_for_it(tmp_path):
    """A driver that printed a result and exited 0 without writing its outcome file (a
    planted module, an early exit) did not run the pipeline: the job fails saying so."""
    store = JobStore(tmp_path / "queue.db")
    result = {"name": "q", "status": "succeeded", "metrics": {"val_accuracy": 0.97}}
    logs = json.dumps({**result, "metrics": {"val_accuracy": 0.5}}) + "\n(raylet) warning\n"
    scheduler = Scheduler(store, _LogsOnly(logs), create_policy("priority"), tmp_path)
    job = _job(store)

    scheduler._succeeded_or_not(job)
    assert job.state == "failed" and "exited 0 without writing its outcome" in job.reason
    assert job.result is None  # the log's JSON line was not taken for a result

    write_outcome(scheduler._outcome_file(job), json.dumps(result))
    scheduler._succeeded_or_not(job)
    assert (job.state, job.result) == ("succeeded", result)
    assert scheduler._outcome_file(job).name == "outcome-1.json"

    write_outcome(scheduler._outcome_file(job), json.dumps({"status": "failed", "error": "x: y"}))
    assert scheduler._failure(job, "Ray says: exit 2") == "x: y"
    scheduler._outcome_file(job).unlink()
    assert scheduler._failure(job, "Ray says: exit 2") == "Ray says: exit 2"


def test_orch_run_writes_its_failure_to_the_result_file(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\ndata: {source: missing.csv}\nmodel: {type: mlp}\n")
    out = tmp_path / "attempt" / "outcome-1.json"
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(spec), "--result-file", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    outcome = read_outcome(out)
    assert outcome["status"] == "failed" and "data.source" in outcome["error"]
    assert outcome["error"] in done.stderr
    assert [p.name for p in out.parent.iterdir()] == ["outcome-1.json"]  # no staging left


def test_a_queue_db_from_before_schema_versions_opens_with_its_jobs(tmp_path):
    path = tmp_path / "queue.db"
    shutil.copyfile(FIXTURES / "queue-release-1.db", path)
    store = JobStore(path)
    assert store.schema_version == SCHEMA_VERSION == 5
    assert store.queue_id == "e9a3e064"
    jobs = {job.name: job for job in store.all()}
    assert {(job.owner, job.team) for job in jobs.values()} == {("admin", "admins")}
    assert not store.identities.enforced() and store.audit.verify().ok
    assert {name: job.state for name, job in jobs.items()} == {
        "iris-done": "succeeded", "iris-failed": "failed",
        "iris-running": "running", "iris-queued": "queued",
    }  # fmt: skip
    assert jobs["iris-done"].result["metrics"]["val_accuracy"] == pytest.approx(0.9667)
    assert jobs["iris-failed"].reason == "iris: training diverged"
    assert store.add(JobInfo(id="", name="new", pipeline="new", priority=0, demand={},
                             spec_path="n.yaml", cwd="/")).id == "job-000005"  # fmt: skip
    store.close()


def test_a_version_2_queue_db_gains_user_quotas_and_keeps_its_users(tmp_path):
    """A queue.db written before per-user quotas (schema 2) opens as 5 with its users, and
    its global idempotency keys become their owners' (schema 4)."""
    path = tmp_path / "queue.db"
    store = JobStore(path)
    store.identities.add_user("root", "admins", "admin")
    keyed = store.add(JobInfo(id="", name="k", pipeline="k", priority=0, demand={}, owner="root",
                              spec_path="k.yaml", cwd="/", idempotency_key="nightly"))  # fmt: skip
    store.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE user_quotas")
    db.execute("UPDATE jobs SET idempotency_key = 'nightly'")  # as schema 2 stored it
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    store = JobStore(path)
    assert store.schema_version == 5 and store.identities.user("root").admin
    assert store.by_key("root", "nightly").id == keyed.id
    assert store.by_key("alice", "nightly") is None
    assert store.identities.set_user_quota("root", cpus=1).cpus == 1
    store.close()


def test_a_queue_db_from_a_newer_release_is_refused_in_one_line(tmp_path):
    path = tmp_path / "queue.db"
    JobStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreVersionError, match=r"queue schema 6, newer than this orch's 5"):
        JobStore(path)


def test_a_result_file_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    spec = tmp_path / "iris.yaml"
    spec.write_text("name: iris\ndata: {source: sklearn://iris}\nmodel: {type: mlp}\n")
    (tmp_path / "a-file").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(spec),
         "--result-file", str(tmp_path / "a-file" / "out.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: --result-file ") and "a-file/out.json" in line
    assert not (tmp_path / ".orch").exists()  # nothing ran


def test_a_queued_spec_that_no_longer_validates_fails_its_job_not_the_pass(tmp_path):
    store = JobStore(tmp_path / "queue.db")
    scheduler = Scheduler(store, _LogsOnly(""), create_policy("priority"), tmp_path)
    job = _job(store)
    job.spec_text = "name: old\nmodel: {type: mlp, params: {hidden_sizes: []}}\n"
    scheduler._submit_to_ray(job)  # _LogsOnly has no submit: reaching Ray would raise
    saved = store.get(job.id)
    assert saved.state == "failed" and saved.reason.startswith("its spec no longer validates:")
