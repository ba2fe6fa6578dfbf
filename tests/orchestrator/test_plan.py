"""A pipeline is planned once: the queue plans a job at submit and hands that plan to the
job's `orch run --plan`, passing the spec on exactly as the user wrote it."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from orchestrator.loader import parse_spec
from orchestrator.plan import RunPlan, plan_for
from orchestrator.scheduling.identity import GIB
from orchestrator.scheduling.policy import create_policy
from orchestrator.scheduling.record import JobInfo
from orchestrator.scheduling.scheduler import Scheduler
from orchestrator.scheduling.store import JobStore

STUDY = """\
name: planned
data: {source: sklearn://iris}
model: {type: mlp, params: {hidden_sizes: [8]}}
train: {epochs: 2, batch_size: 16, workers: 1, resources_per_worker: {CPU: 1}}
tune:
  metric: val_accuracy
  num_samples: 6
  space:
    train.optimizer.lr: {loguniform: [0.001, 0.01]}
"""


def test_a_plan_fixes_runner_stages_demand_and_trials_at_once(tmp_path):
    spec, _ = parse_spec(STUDY, Path("planned.yaml"))
    plan = plan_for(spec, {"CPU": 2.0, "memory": 8 * GIB})
    assert (plan.stages, plan.runner) == (["tune", "register"], "local")
    # each trial's worker is charged at least 1 GiB of memory (scheduling.demand)
    assert plan.concurrent_trials == 2 and plan.demand.total == {"CPU": 2.0, "memory": 2 * GIB}
    big = {"CPU": 16.0, "memory": 16 * GIB}
    assert plan_for(spec, big).concurrent_trials == 6  # the trial budget caps it
    assert RunPlan.read(plan.write(tmp_path / "plan.json")) == plan


class _Submits:
    """The Ray side of a submit: records what the scheduler hands Ray."""

    def __init__(self):
        self.entrypoints: list[str] = []

    def submit(self, submission_id, entrypoint, env_vars, metadata) -> bool:
        self.entrypoints.append(entrypoint)
        return True


def test_the_queue_passes_its_plan_and_the_spec_as_written(tmp_path):
    ray = _Submits()
    scheduler = Scheduler(JobStore(tmp_path / "q.db"), ray, create_policy("priority"), tmp_path)
    job = JobInfo(id="job-000001", name="planned", pipeline="planned", priority=0,
                  demand={"CPU": 1.0}, bundle={"CPU": 1.0}, concurrent_trials=1,
                  spec_path="planned.yaml", spec_text=STUDY, cwd=str(tmp_path),
                  run_name="planned-job-000001", attempt=1,
                  submission_id="orch-x-job-000001-1")  # fmt: skip

    scheduler._submit_to_ray(job)

    folder = tmp_path / "jobs" / "job-000001"
    assert (folder / "spec.yaml").read_text() == STUDY  # never rewritten
    plan = RunPlan.read(folder / "plan.json")
    assert plan.concurrent_trials == 1 and plan.demand.total == {"CPU": 1.0}
    (entrypoint,) = ray.entrypoints
    command = shlex.split(entrypoint.split(" && exec ", 1)[1])
    assert command[command.index("--plan") + 1] == str(folder / "plan.json")


def test_a_plan_that_is_not_one_is_refused_in_one_line(tmp_path):
    spec = tmp_path / "planned.yaml"
    spec.write_text(STUDY)
    (tmp_path / "plan.json").write_text('{"pipeline": "planned"}')
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(spec), "--plan", "plan.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: --plan plan.json: not a readable plan")
