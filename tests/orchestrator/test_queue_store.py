"""The queue's durable parts without Ray: SQLite records, idempotency, demand, the spec section."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator.exceptions import SpecError
from orchestrator.loader import load_spec, parse_spec
from orchestrator.scheduling.demand import job_demand, never_fits
from orchestrator.scheduling.identity import GIB
from orchestrator.scheduling.record import JobInfo
from orchestrator.scheduling.store import DuplicateKey, JobStore

BASE = """\
name: q
data: {source: sklearn://iris}
model: {type: mlp, params: {hidden_sizes: [8]}}
train: {epochs: 1, batch_size: 16, workers: 2, resources_per_worker: {CPU: 0.5}}
"""


def record(key: str | None = None) -> JobInfo:
    return JobInfo(
        id="",
        name="q",
        pipeline="q",
        priority=50,
        demand={"CPU": 1},
        spec_path="q.yaml",
        cwd="/",
        idempotency_key=key,
    )


def test_records_survive_reopening_and_ids_are_never_reused(tmp_path):
    store = JobStore(tmp_path / "queue.db")
    first, second = store.add(record()), store.add(record())
    assert (first.id, second.id) == ("job-000001", "job-000002")
    second.moved("running", "Ray job orch-job-000002-1")
    store.save(second)
    store.close()

    reopened = JobStore(tmp_path / "queue.db")
    assert [j.id for j in reopened.queued()] == ["job-000001"]
    assert reopened.get("job-000002").state == "running"
    assert reopened.get("job-000002").history[-1].reason == "Ray job orch-job-000002-1"
    assert reopened.add(record()).id == "job-000003"


def test_one_idempotency_key_one_job(tmp_path):
    store = JobStore(tmp_path / "queue.db")
    first = store.add(record("nightly-2026-12-01"))
    with pytest.raises(DuplicateKey) as dup:
        store.add(record("nightly-2026-12-01"))
    assert dup.value.job.id == first.id
    assert len(store.all()) == 1
    assert store.by_key("admin", "nightly-2026-12-01").id == first.id


def spec(extra: str = "", train: str | None = None):
    text = BASE if train is None else BASE.replace(BASE.splitlines()[3], train)
    return parse_spec(text + extra, tmp_name())[0]


def tmp_name():
    from pathlib import Path

    return Path("q.yaml")


def test_demand_is_workers_times_resources_times_concurrent_trials():
    # each worker is charged at least 1 GiB of Ray's memory (scheduling.demand)
    assert job_demand(spec(), {"CPU": 8}).total == {"CPU": 1.0, "memory": 2 * GIB}
    tuned = spec(
        "tune: {metric: val_accuracy, num_samples: 6, max_concurrent_trials: 3,"
        " space: {train.optimizer.lr: {loguniform: [0.001, 0.1]}}}\n"
    )
    demand = job_demand(tuned, {"CPU": 8, "memory": 16 * GIB})
    assert demand.total == {"CPU": 3.0, "memory": 6 * GIB} and demand.concurrent_trials == 3
    # null concurrency: as many trials as the whole cluster holds, at most num_samples
    open_ended = spec(
        "tune: {metric: val_accuracy, num_samples: 6,"
        " space: {train.optimizer.lr: {loguniform: [0.001, 0.1]}}}\n"
    )
    assert job_demand(open_ended, {"CPU": 2, "memory": 16 * GIB}).concurrent_trials == 2
    gpu = spec(train="train: {epochs: 1, workers: 2, resources_per_worker: {CPU: 2, GPU: 1}}")
    assert job_demand(gpu, {"CPU": 8}).total == {"CPU": 4.0, "GPU": 2.0, "memory": 2 * GIB}


def test_a_job_that_can_never_fit_says_why():
    big = job_demand(spec(train="train: {workers: 4, resources_per_worker: {CPU: 1}}"), {})
    node = {"CPU": 2.0, "memory": 8 * GIB}
    reason = never_fits(big, node, [node])
    assert reason.startswith(
        "needs {CPU 4, memory 4 GiB} at once but the whole cluster has {CPU 2, memory 8 GiB}"
    )
    wide = job_demand(spec(train="train: {workers: 2, resources_per_worker: {CPU: 3}}"), {})
    cluster = {"CPU": 6.0, "memory": 16 * GIB}
    two, four, three = ({"CPU": n, "memory": 8 * GIB} for n in (2, 4, 3))
    assert "nodes hold only 1 of them" in never_fits(wide, cluster, [two, four])
    assert never_fits(wide, cluster, [three, three]) == ""


def test_scheduling_section_is_validated_with_file_and_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(BASE + "scheduling: {priority: urgent}\n")
    with pytest.raises(SpecError, match=r"p.yaml:5: scheduling.priority: .*'urgent': use low"):
        load_spec(path, check_data=False)
    path.write_text(BASE + "scheduling: {priority: high, queue: nightly}\n")
    loaded = load_spec(path, check_data=False)
    assert loaded.scheduling.priority_value == 100 and loaded.scheduling.queue == "nightly"


def test_submit_of_a_missing_file_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "submit",
            str(tmp_path / "nope.yaml"),
            "--address",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "nope.yaml" in proc.stderr
